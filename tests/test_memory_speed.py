"""Memory and speed options change cost, never results; the estimator tracks measured peaks; the
benchmark runs the trainer's own update and writes its table's numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from receler.estimate_memory import estimate, fewest_checkpointed_blocks, model_shape, _pipe_of
from receler.families import get_family
from receler.presets import PRESETS, build_transformer

ROOT = Path(__file__).resolve().parent.parent


def _trained_erasers(tiny_runs, *extra):
    """Three updates on the tiny model with the given trainer flags; the resulting eraser weights."""
    trainer, batch, sampler = tiny_runs.trainer("cogvideox", *extra)
    x = sampler.initial_latents(2)
    for i in range(3):
        trainer.update(sampler, x, i, batch)
    return [p.detach().clone() for p in trainer.params], trainer


@pytest.mark.parametrize("flags", [("--checkpoint_blocks", "1"), ("--gradient_checkpointing",),
                                   ("--gradient_checkpointing", "--offload_activations")],
                         ids=["one_block", "all_blocks", "all_blocks_offloaded"])
def test_checkpointing_changes_nothing_but_cost(flags, tiny_runs):
    reference, _ = _trained_erasers(tiny_runs, "--checkpoint_blocks", "0")
    got, trainer = _trained_erasers(tiny_runs, *flags)
    assert trainer.checkpointed_blocks == (1 if "1" in flags else 2)
    assert all(torch.allclose(a, b, atol=1e-7, rtol=1e-6) for a, b in zip(reference, got))


def test_fp8_storage_keeps_erasers_float32_and_trains(tiny_runs):
    before = {k: v.clone() for k, v in _trained_erasers(tiny_runs)[1].transformer.state_dict().items()
              if ".adapter." not in k}
    params, trainer = _trained_erasers(tiny_runs, "--fp8_weights")
    linear = trainer.transformer.transformer_blocks[0].attn1.attn.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn, "block weights are stored in fp8"
    assert all(p.dtype == torch.float32 for p in params) and all(torch.isfinite(p).all() for p in params)
    assert any(p.abs().max() > 0 for p in params[3::4]), "erasers trained (up.bias moved)"
    assert before, "sanity"


# Peak GiB measured on an H100 80GB, full-size configs, random weights, unlearn-only update (docs/design.md, "Memory and speed";
# issue 11 for Wan 1.3B). The estimator must stay within 15% of each.
H100_MEASURED = [
    ("cogvideox-2b", 17, dict(dtype="float32", frozen_copy=True), 33.1),
    ("cogvideox-2b", 17, dict(), 14.3),
    ("cogvideox-2b", 17, dict(checkpoint_blocks=99), 4.8),
    ("cogvideox-2b", 49, dict(dtype="float32", frozen_copy=True), 63.8),
    ("cogvideox-2b", 49, dict(), 31.2),
    ("cogvideox-2b", 49, dict(checkpoint_blocks=99), 6.8),
    ("cogvideox-5b", 49, dict(checkpoint_blocks=99), 17.4),
    ("cogvideox-5b", 49, dict(checkpoint_blocks=99, fp8=True), 13.2),
    ("hunyuan", 49, dict(checkpoint_blocks=99), 32.5),
    ("hunyuan", 49, dict(checkpoint_blocks=99, fp8=True), 24.2),
    ("wan-1.3b", 81, dict(checkpoint_blocks=99), 9.1),
    ("wan-14b", 81, dict(checkpoint_blocks=99), 49.2),
    ("wan-14b", 81, dict(checkpoint_blocks=99, fp8=True), 36.6),
]


def _shape(preset_name, frames):
    preset = PRESETS[preset_name]
    family = get_family(preset.family)
    transformer = build_transformer(preset, torch.bfloat16, "meta")
    return model_shape(family, transformer, _pipe_of(family, transformer), frames, preset.height, preset.width)


@pytest.mark.parametrize("preset, frames, settings, measured_gib", H100_MEASURED,
                         ids=[f"{p}-{f}-{'-'.join(f'{k}={v}' for k, v in s.items()) or 'bf16'}" for p, f, s, _ in H100_MEASURED])
def test_estimate_within_15_percent_of_gpu_measurements(preset, frames, settings, measured_gib):
    peak = estimate(_shape(preset, frames), **settings)["peak"] / 2**30
    assert abs(peak - measured_gib) / measured_gib <= 0.15, f"estimated {peak:.2f} GiB, measured {measured_gib}"


# Every full-size preset: the model's nominal size in billions of parameters (its name) and the video tokens of
# its frames x size by the VAE's compression and patch size (CogVideoX, HunyuanVideo, Wan: 4 frames and 16 x 16
# pixels per token; LTX-Video: 8 frames and 32 x 32), and its text tokens.
PRESET_FACTS = {
    "cogvideox-2b": (2, (17 - 1) // 4 + 1, 480 // 16, 720 // 16, 226),
    "cogvideox-5b": (5, (49 - 1) // 4 + 1, 480 // 16, 720 // 16, 226),
    "hunyuan": (13, (49 - 1) // 4 + 1, 512 // 16, 768 // 16, 256),
    "wan-1.3b": (1.3, (81 - 1) // 4 + 1, 480 // 16, 832 // 16, 512),
    "wan-14b": (14, (81 - 1) // 4 + 1, 480 // 16, 832 // 16, 512),
    "ltx-video-2b": (2, (121 - 1) // 8 + 1, 512 // 32, 768 // 32, 128),
}


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if not p.tiny])
def test_every_preset_has_its_models_size_and_token_count(name):
    billions, frames, rows, cols, text = PRESET_FACTS[name]
    preset = PRESETS[name]
    shape = _shape(name, preset.num_frames)
    assert 0.75 * billions < shape.params / 1e9 < 1.25 * billions
    assert (shape.video_tokens, shape.text_tokens) == (frames * rows * cols, text)
    peak = estimate(shape, checkpoint_blocks=99)["peak"]
    assert estimate(shape)["peak"] > peak > 2 * shape.params, "checkpointing saves memory; weights are bf16"


def test_estimate_grows_with_size_and_shrinks_with_each_option():
    small, big = _shape("cogvideox-2b", 17), _shape("cogvideox-2b", 49)
    assert estimate(big)["peak"] > estimate(small)["peak"]
    plain = estimate(big)["peak"]
    some = estimate(big, checkpoint_blocks=10)["peak"]
    every = estimate(big, checkpoint_blocks=99)["peak"]
    offloaded = estimate(big, checkpoint_blocks=99, offload_activations=True)["peak"]
    fp8 = estimate(big, checkpoint_blocks=99, offload_activations=True, fp8=True)["peak"]
    assert plain > some > every > offloaded > fp8


def test_fewest_checkpointed_blocks_is_the_smallest_count_that_fits():
    from receler.config import ResolvedTraining, TrainConfig

    preset = PRESETS["cogvideox-2b"]
    family = get_family(preset.family)
    transformer = build_transformer(preset, torch.bfloat16, "meta")
    config = TrainConfig(model_path="-", target_concept="x", output_dir="-", alpha=0.0)
    resolved = ResolvedTraining(model_family="cogvideox", device="cuda", dtype="bfloat16", num_frames=49, height=480,
                                width=720, checkpoint_blocks=0, beta=0.0, loss_target="ff", concept_words=("x",),
                                prompts=("x",), preserve_prompts=None)
    shape = _shape("cogvideox-2b", 49)
    budget = estimate(shape, checkpoint_blocks=12)["peak"] + 1
    count = fewest_checkpointed_blocks(family, transformer, resolved, config, budget)
    assert count == 12
    assert estimate(shape, checkpoint_blocks=count - 1)["peak"] > budget


@pytest.mark.slow
def test_benchmark_prints_the_table_and_writes_both_setups(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), "--preset", "tiny",
                           "--setups", "naive,fp8_swap", "--warmup", "1", "--updates", "2", "--json", str(out)],
                          check=True, capture_output=True, text=True, timeout=300)
    data = json.loads(out.read_text())
    assert list(data) == ["naive", "fp8", "fp8_swap"], "a swap setup runs after the same setup without swap"
    for setup in data:
        assert data[setup]["ms_per_update"] > 0 and data[setup]["peak_bytes"] > 0
        assert data[setup]["flops_per_update"] > 0
    assert data["fp8"]["checkpointed_blocks"] == data["fp8"]["blocks"] == 2
    assert data["naive"]["checkpointed_blocks"] == 0
    # the tiny model fits 16 GiB unswapped: 'auto' swaps one block, and the flop count is unchanged by it
    assert (data["fp8_swap"]["blocks_to_swap"], data["fp8"]["blocks_to_swap"]) == (1, 0)
    assert data["fp8_swap"]["flops_per_update"] == data["fp8"]["flops_per_update"]
    assert "| naive |" in proc.stdout and "| fp8 |" in proc.stdout and "speed vs naive" in proc.stdout
    overlap = data["fp8_swap"]["ms_per_update"] / data["fp8"]["ms_per_update"]
    assert f"| 1 | {overlap:.2f}x |" in proc.stdout
