"""The hand-written no-CFG loop reproduces each family's diffusers pipeline (guidance off) for the same seed:
max abs difference <= 1e-5 in float32 on the tiny models (docs/design.md, Conventions)."""

import pytest
import torch

from receler.families import get_family
from receler.sampling import sample
from receler.tiny import build_tiny_pipeline

PROMPT = "a red circle moving left on a gray background"

CASES = [
    ("cogvideox", {"scheduler": "ddim"}),                  # CogVideoX-2b: DDIM, sincos positions
    ("cogvideox", {"scheduler": "dpm", "rotary": True}),   # CogVideoX-5b: multistep DPM with noise, rotary
    ("hunyuan_video", {}),                                  # flow matching, embedded guidance, masked text
    ("wan", {}),                                            # flow matching with the UniPC multistep solver
]


def pipeline_no_cfg_kwargs(family_name, pipe):
    """The arguments that make each diffusers pipeline run one conditional pass per step. HunyuanVideo's
    guidance_scale is its embedded guidance; true CFG stays off without a negative prompt."""
    guidance = 6.0 if family_name == "hunyuan_video" else 1.0
    return {"guidance_scale": guidance, **get_family(family_name).pipeline_text_kwargs(pipe)}


@pytest.mark.parametrize("family_name, build", CASES, ids=["cogvideox-ddim", "cogvideox-dpm", "hunyuan_video", "wan"])
def test_loop_equals_pipeline_without_guidance(family_name, build):
    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0, **build)
    size = dict(num_frames=9, height=32, width=32)
    cond = family.encode_prompts(pipe, [PROMPT], "cpu")
    ours = sample(family, pipe, cond, num_inference_steps=5, generator=torch.Generator().manual_seed(7), progress=False, **size)
    theirs = pipe(
        PROMPT, num_inference_steps=5, generator=torch.Generator().manual_seed(7), output_type="latent",
        **size, **pipeline_no_cfg_kwargs(family_name, pipe),
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
