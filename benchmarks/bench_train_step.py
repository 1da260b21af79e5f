"""Benchmark the trainer's own update against the naive setup, and print a table.

    python benchmarks/bench_train_step.py --preset cogvideox-2b --num_frames 17 --setups naive,optimized
    python benchmarks/bench_train_step.py --preset tiny --json out.json          # CPU, seconds

Every setup runs :meth:`receler.trainer.EraserTrainer.update` (the code path users run) on a full-size
transformer with random weights (no download), with precomputed random text embeddings and no VAE, in
its own subprocess so peak memory is its own: ``torch.cuda.max_memory_allocated`` on a GPU, peak RSS on a
CPU. Setups:

- ``naive``: two float32 copies (a separate frozen model), no checkpointing: the first experiments' recipe
- ``bf16``: one bfloat16 backbone with erasers toggled, no checkpointing
- ``optimized``: ``bf16`` + gradient checkpointing of every block (+ ``--fp8_weights`` / ``--compile`` if given)
- ``fp8``: ``optimized`` + fp8 weight storage;  ``compiled``: ``optimized`` + compiled blocks
- ``loc``, ``pre``, ``full_loss``: ``optimized`` with the localization loss, the preservation loss, or both
- ``lean``: ``fp8`` + the checkpointed blocks' inputs in CPU memory (``--offload_activations``)
- ``swap``, ``fp8_swap``, ``lean_swap``: ``optimized``, ``fp8``, ``lean`` + block swap (``--blocks_to_swap``): the
  model is built in CPU memory and the trainer moves all but the swapped blocks' weights to the GPU. Each runs
  after the same setup without swap (added when not asked for), and the table's "swap overlap" column is the time
  with swap / the time without: 1.00x means the copies hide entirely behind the compute

Updates are unlearn-only (two frozen passes, one eraser pass with backward) unless the setup says otherwise.
FLOPs are counted from the executed operators' shapes (``torch.utils.flop_counter``) over one update.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SETUPS = {
    "naive": dict(dtype="float32", two_copies=True, checkpoint=False),
    "bf16": dict(dtype="bfloat16", checkpoint=False),
    "optimized": dict(dtype="bfloat16", checkpoint=True),
    "fp8": dict(dtype="bfloat16", checkpoint=True, fp8=True),
    "compiled": dict(dtype="bfloat16", checkpoint=True, compile=True),
    "loc": dict(dtype="bfloat16", checkpoint=True, alpha=1.0),
    "pre": dict(dtype="bfloat16", checkpoint=True, beta=1.0),
    "full_loss": dict(dtype="bfloat16", checkpoint=True, alpha=1.0, beta=1.0),
    "lean": dict(dtype="bfloat16", checkpoint=True, fp8=True, offload=True),
    "swap": dict(dtype="bfloat16", checkpoint=True, swap=True, base="optimized"),
    "fp8_swap": dict(dtype="bfloat16", checkpoint=True, fp8=True, swap=True, base="fp8"),
    "lean_swap": dict(dtype="bfloat16", checkpoint=True, fp8=True, offload=True, swap=True, base="lean"),
}
# Dense bf16 peak of the cards this project measures on (spec sheet), for the "% of peak" column.
DEVICE_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def parse_args(argv=None):
    from receler.presets import PRESETS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Setups: " + ", ".join(SETUPS))
    p.add_argument("--preset", choices=tuple(PRESETS), default="tiny", help="model size (full-size configs, random weights)")
    p.add_argument("--num_frames", type=int, default=None, help="video frames (default: the preset's)")
    p.add_argument("--height", type=int, default=None, help="video height (default: the preset's)")
    p.add_argument("--width", type=int, default=None, help="video width (default: the preset's)")
    p.add_argument("--batch_size", type=int, default=1, help="prompts per update")
    p.add_argument("--eraser_rank", type=int, default=128, help="eraser rank")
    p.add_argument("--setups", default="naive,optimized", help="comma-separated setups to run, in order (see below)")
    p.add_argument("--fp8_weights", action="store_true", help="add fp8 weight storage to the 'optimized' setup")
    p.add_argument("--compile", action="store_true", help="add compiled blocks to the 'optimized' setup")
    p.add_argument("--checkpoint_blocks", type=int, default=None,
                   help="checkpoint only this many blocks in the checkpointed setups (default: all)")
    p.add_argument("--blocks_to_swap", default="auto",
                   help="blocks the swap setups swap: a number, or 'auto' = the fewest that fit --gpu_memory by the "
                   "memory estimator (at least 1)")
    p.add_argument("--gpu_memory", type=float, default=16.0, help="GiB the swap setups' 'auto' block count aims at")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates first (compilation, allocator warm-up)")
    p.add_argument("--updates", type=int, default=3, help="timed updates")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--json", default=None, help="also write the numbers here (keys: setup names, 'naive'/'optimized' ...)")
    p.add_argument("--run_setup", default=None, help=argparse.SUPPRESS)  # internal: run one setup in this process
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------- one setup


def run_setup(spec: dict) -> dict:
    """Build the preset, run warm-up and timed updates of the real trainer, return the measurements."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from receler.config import TrainConfig
    from receler.families import get_family
    from receler.presets import PRESETS, build_preset_pipeline, random_conditioning
    from receler.trainer import EraserTrainer, PromptSet, make_batch
    from receler.training import resolve_training

    preset = PRESETS[spec["preset"]]
    family = get_family(preset.family)
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    frames, height, width, batch_size = spec["num_frames"], spec["height"], spec["width"], spec["batch_size"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # With swap the model starts in CPU memory, as in training: the trainer moves what stays on the GPU.
    pipe = build_preset_pipeline(preset, dtype, "cpu" if spec.get("blocks_to_swap") else device)
    frozen = None
    if spec.get("two_copies"):
        frozen = build_preset_pipeline(preset, dtype, device).transformer
    checkpoint = bool(spec.get("checkpoint"))
    config = TrainConfig(
        model_path=preset.name, target_concept="concept", output_dir="-", eraser_rank=spec["eraser_rank"],
        alpha=spec.get("alpha", 0.0), beta=spec.get("beta", 0.0), num_inference_steps=50,
        num_frames=frames, height=height, width=width, batch_size=batch_size,
        gradient_checkpointing=checkpoint and spec.get("checkpoint_blocks") is None,
        checkpoint_blocks=(spec.get("checkpoint_blocks") or 0) if checkpoint else 0,
        fp8_weights=bool(spec.get("fp8")), compile=bool(spec.get("compile")),
        offload_activations=bool(spec.get("offload")), blocks_to_swap=spec.get("blocks_to_swap") or 0,
    )
    resolved = resolve_training(config, family, pipe, device, prompts=["benchmark"] * batch_size)
    trainer = EraserTrainer(family, pipe, config, device, frozen_transformer=frozen, resolved=resolved)

    cond = random_conditioning(preset, pipe, 1, "cpu", dtype)
    positions = torch.zeros(1, next(iter(cond.values())).shape[1], dtype=torch.bool)
    positions[0, 1:3] = True  # two "concept" tokens, as in a short concept word
    prompts = ["benchmark"] * batch_size
    data = PromptSet(prompts, prompts if config.beta > 0 else None, [cond] * batch_size,
                     [cond] * batch_size if config.beta > 0 else None, cond,
                     positions.repeat(batch_size, 1), torch.ones(batch_size, dtype=torch.bool))
    grid = family.token_grid(pipe, frames, height, width)
    batch = make_batch(data, list(range(batch_size)), device, grid)
    sampler = family.make_sampler(pipe, 50, frames, height, width, device, torch.Generator().manual_seed(0))
    x = sampler.initial_latents(batch_size)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(spec["warmup"]):
        trainer.update(sampler, x, 10, batch)
    with FlopCounterMode(display=False) as counter:
        trainer.update(sampler, x, 10, batch)
    sync()
    times = []
    for _ in range(spec["updates"]):
        start = time.perf_counter()
        trainer.update(sampler, x, 10, batch)
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        name = torch.cuda.get_device_name(device)
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        name = "cpu"
    ms = 1000 * sorted(times)[len(times) // 2]
    flops = counter.get_total_flops()
    return {
        "ms_per_update": ms,
        "peak_bytes": int(peak),
        "flops_per_update": int(flops),
        "tflops_per_s": flops / (ms / 1000) / 1e12,
        "device": name,
        "video_tokens": int(grid[0] * grid[1] * grid[2]),
        "checkpointed_blocks": trainer.checkpointed_blocks,
        "blocks_to_swap": trainer.resolved.blocks_to_swap,
        "blocks": len(family.block_modules(pipe.transformer)),
        **{k: spec[k] for k in ("preset", "num_frames", "height", "width", "batch_size", "eraser_rank")},
        "setup": spec["name"],
    }


def swap_count(spec: dict, requested, gpu_memory: float) -> int:
    """A swap setup's block count: ``requested``, or for 'auto' the fewest blocks that fit ``gpu_memory`` GiB by
    the memory estimator with the setup's other settings (at least one: a swap setup swaps)."""
    if requested != "auto":
        return int(requested)
    import torch

    from receler.estimate_memory import _pipe_of, fewest_blocks_to_swap, model_shape
    from receler.families import get_family
    from receler.presets import PRESETS, build_transformer

    preset = PRESETS[spec["preset"]]
    family = get_family(preset.family)
    transformer = family.build_tiny().transformer if preset.tiny else build_transformer(preset, torch.bfloat16, "meta")
    shape = model_shape(family, transformer, _pipe_of(family, transformer), spec["num_frames"], spec["height"],
                        spec["width"])
    count = fewest_blocks_to_swap(shape, gpu_memory * 2**30, batch_size=spec["batch_size"], dtype=spec["dtype"],
                                  fp8=bool(spec.get("fp8")), eraser_rank=spec["eraser_rank"],
                                  localization=spec.get("alpha", 0.0) > 0, offload_activations=bool(spec.get("offload")))
    return max(1, shape.blocks if count is None else count)


def _run_in_subprocess(spec: dict) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, __file__, "--run_setup", json.dumps(spec)], capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
    error = "out of memory" if any("out of memory" in t.lower() for t in tail) else " | ".join(tail)[-500:]
    return {"setup": spec["name"], "error": error}


# ------------------------------------------------------------------------------------- the table


def _fmt_row(name, r, base, without_swap=None):
    if "error" in r:
        return f"| {name} | {r['error'][:60]} | | | | | | | | |"
    peak = DEVICE_PEAK_FLOPS.get(next((k for k in DEVICE_PEAK_FLOPS if k in r["device"]), ""), None)
    speed = mem = ""
    if base and "error" not in base:
        speed = f"{base['ms_per_update'] / r['ms_per_update']:.2f}x"
        mem = f"{base['peak_bytes'] / r['peak_bytes']:.2f}x"
    frac = f"{100 * r['tflops_per_s'] * 1e12 / peak:.0f}%" if peak else "n/a"
    swapped = r.get("blocks_to_swap") or ""
    overlap = ""
    if swapped and without_swap and "error" not in without_swap:
        overlap = f"{r['ms_per_update'] / without_swap['ms_per_update']:.2f}x"
    return (f"| {name} | {r['ms_per_update']:.1f} | {r['peak_bytes'] / 2**30:.2f} | {speed} | {mem} | "
            f"{r['flops_per_update'] / 1e9:,.1f} | {r['tflops_per_s']:.1f} | {frac} | {swapped} | {overlap} |")


def print_table(results: dict, args) -> None:
    first = next(iter(results.values()))
    device = first.get("device", "?")
    print(f"\n{args.preset}, {args.num_frames} frames x {args.height}x{args.width}, batch {args.batch_size}, "
          f"rank {args.eraser_rank}, device: {device}")
    print("| setup | ms/update | peak GiB | speed vs naive | memory vs naive | GFLOP/update | TFLOP/s | % of peak "
          "| blocks swapped | swap overlap (time / without swap) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = results.get("naive")
    for name, r in results.items():
        without_swap = results.get(SETUPS[name].get("base")) if name in SETUPS else None
        print(_fmt_row(name, r, base if name != "naive" else None, without_swap))


def spec_swaps(name: str) -> bool:
    return bool(SETUPS[name].get("swap"))


def main(argv=None):
    args = parse_args(argv)
    if args.run_setup:
        print("RESULT " + json.dumps(run_setup(json.loads(args.run_setup))), flush=True)
        return
    from receler.presets import PRESETS

    import torch

    preset = PRESETS[args.preset]
    args.num_frames = args.num_frames or preset.num_frames
    args.height = args.height or preset.height
    args.width = args.width or preset.width
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    names = []
    for name in [s.strip() for s in args.setups.split(",") if s.strip()]:
        if name not in SETUPS:
            raise SystemExit(f"error: unknown setup {name!r}; choose from {', '.join(SETUPS)}")
        base = SETUPS[name].get("base")
        if base and base not in names:  # the overlap needs the time without swap
            names.append(base)
        if name not in names:
            names.append(name)
    for name in names:
        spec = {**SETUPS[name], "name": name, "preset": args.preset, "num_frames": args.num_frames,
                "height": args.height, "width": args.width, "batch_size": args.batch_size,
                "eraser_rank": args.eraser_rank, "warmup": args.warmup, "updates": args.updates, "device": device,
                "checkpoint_blocks": None if spec_swaps(name) else args.checkpoint_blocks}
        if name == "optimized":
            spec.update(fp8=args.fp8_weights, compile=args.compile)
        if spec_swaps(name):
            spec["blocks_to_swap"] = swap_count(spec, args.blocks_to_swap, args.gpu_memory)
        results[name] = _run_in_subprocess(spec)
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
