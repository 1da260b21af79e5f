"""The hand-written no-CFG loop reproduces each family's diffusers pipeline (guidance off) for the same seed:
max abs difference <= 1e-5 in float32 on the tiny models (docs/design.md, Conventions)."""

import pytest
import torch

from receler.families import all_families, get_family
from receler.sampling import sample
from receler.tiny import build_tiny_pipeline

PROMPT = "a red circle moving left on a gray background"

# Every registered family, in every layout its tiny model can take (e.g. CogVideoX-2b's DDIM with sincos
# positions and 5b's multistep DPM solver with rotary positions).
CASES = [(f.name, build) for f in all_families() for build in f.tiny_variants.values()]
IDS = [f"{f.name}-{variant}" if variant else f.name for f in all_families() for variant in f.tiny_variants]


@pytest.mark.parametrize("family_name, build", CASES, ids=IDS)
def test_loop_equals_pipeline_without_guidance(family_name, build):
    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0, **build)
    size = dict(num_frames=9, height=32, width=32)
    cond = family.encode_prompts(pipe, [PROMPT], "cpu")
    ours = sample(family, pipe, cond, num_inference_steps=5, generator=torch.Generator().manual_seed(7), progress=False, **size)
    theirs = pipe(
        PROMPT, num_inference_steps=5, generator=torch.Generator().manual_seed(7), output_type="latent",
        **size, **family.unguided_pipeline_kwargs(pipe),
    ).frames
    assert ours.shape == theirs.shape
    assert ours.abs().max() > 0.1, "the comparison must not be between two zero tensors"
    assert (ours - theirs.float()).abs().max().item() <= 1e-5


def test_sampler_state_round_trip_mid_trajectory():
    """Saving and restoring a multistep solver mid-trajectory continues exactly as without the interruption."""
    family = get_family("wan")
    pipe = build_tiny_pipeline("wan", seed=0)
    cond = family.encode_prompts(pipe, [PROMPT], "cpu")

    def run(interrupt_at=None):
        sampler = family.make_sampler(pipe, 6, 9, 32, 32, "cpu", torch.Generator().manual_seed(1))
        x = sampler.initial_latents(1)
        for i in range(sampler.num_steps):
            if i == interrupt_at:
                state, saved_x = sampler.state_dict(), x.clone()
                sampler = family.make_sampler(pipe, 6, 9, 32, 32, "cpu", torch.Generator().manual_seed(99))
                sampler.load_state_dict(state)
                x = saved_x
            with torch.no_grad():
                x = sampler.step(sampler.predict(pipe.transformer, x, i, cond), i, x)
        return x

    assert torch.equal(run(), run(interrupt_at=3))
