"""Estimate the peak memory of one eraser update, analytically, and recommend settings that fit a GPU.

    python receler/estimate_memory.py --preset cogvideox-5b --num_frames 49 --gradient_checkpointing
    python receler/estimate_memory.py --model_path models/CogVideoX-5b --recommend --gpu_memory 12
    python receler/estimate_memory.py --preset wan-14b --fp8_weights --offload_activations --use_cpu_offload --gpu_memory 16

The model of the peak (bytes; N = tokens through a block (video + text), D = width, b = backbone bytes):

- weights: every backbone parameter at ``b`` bytes (fp8 storage: 1 byte for the blocks' linear layers)
- erasers: float32 parameters, gradients and AdamW's two moments: 16 bytes per eraser parameter
- backward: a block that is not checkpointed keeps ``SAVED x N x D x b`` for backward; a checkpointed
  one keeps its inputs (``N x D x b``); backward then needs ``TRANSIENT x N x D x b`` for the block
  being recomputed and differentiated
- the frozen passes' targets (``o_c``, ``o_0`` and the float32 ``v_neg``)
- localization (frozen pass only, when the backward activations are gone): the chunked score matrix
- block swap (``--blocks_to_swap N``): the last N blocks' weights leave the GPU for CPU memory, and
  ``1 + PREFETCH_BLOCKS`` of them are on the GPU at a time (the block running and the ones copied ahead):
  weights resident = total - swapped + prefetch window. With fp8 storage the swapped blocks take their share
  of the compute-dtype copies with them (an assumption: swap has not been measured on a GPU yet)

SAVED and TRANSIENT are per family (``ModelFamily.memory_saved_per_block`` / ``memory_backward_transient``),
as is whether the text travels through the blocks with the video (joint attention) or only enters through
cross-attention (``ModelFamily.attention_text_position``):
14.5 and 12.5 were fitted to the CogVideoX-2b H100 measurements in docs/design.md ("Memory and speed") and reproduce the 5b and
HunyuanVideo rows; Wan keeps float32 intermediates and was fitted to its own rows. fp8 storage keeps about
29% of the fp8 weight bytes again as compute-dtype copies (fitted to the three fp8 rows). On a CPU the
Python/torch runtime itself (~0.4 GiB RSS) dominates small models and is added.
"""

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from receler.block_swap import PREFETCH_BLOCKS
from receler.errors import UserError, cli_entry, setup_logging

logger = logging.getLogger("receler.estimate_memory")

FP8_OVERHEAD = 0.29   # fp8 storage: compute-dtype weight copies alive during backward, per fp8 weight byte
# Peak RSS of the Python + torch + diffusers process around a tiny update: 0.40-0.55 GiB depending on the
# machine and its libraries, so CPU estimates are rough; the GPU terms are what the estimator is fitted to.
CPU_RUNTIME = 0.40 * 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MASK_CHUNK_ELEMENTS = 2**26  # receler.localization.DEFAULT_CHUNK_ELEMENTS


@dataclass
class ModelShape:
    """What the estimate needs to know about a transformer and a video size."""

    family: str
    blocks: int
    width: int
    heads: int
    params: int
    linear_params_in_blocks: int
    eraser_widths: list
    video_tokens: int
    text_tokens: int
    joint_text: bool  # text travels through every block with the video (joint attention, not cross-attention)
    saved_per_block: float
    backward_transient: float
    block_params: list = field(default_factory=list)         # per block, in call order (erasers excluded)
    block_linear_params: list = field(default_factory=list)  # per block: linear-layer weights (fp8 storage)


def model_shape(family, transformer, pipe, num_frames, height, width) -> ModelShape:
    """Measure a transformer (real, or built on the ``meta`` device) for the estimate."""
    frames, rows, cols = family.token_grid(pipe, num_frames, height, width)
    blocks = family.block_modules(transformer)
    linear = sum(m.weight.numel() for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear))
    widths = [w for _, w in family.layout.expected_shapes(transformer)]
    attn = family.layout.attention(family.layout.blocks(transformer)[0])
    return ModelShape(
        family=family.name, blocks=len(blocks), width=max(widths), heads=attn.heads,
        params=sum(p.numel() for n, p in transformer.named_parameters() if ".adapter." not in n),
        linear_params_in_blocks=linear, eraser_widths=widths, video_tokens=frames * rows * cols,
        text_tokens=family.text_length(pipe), joint_text=family.attention_text_position != "cross",
        saved_per_block=family.memory_saved_per_block, backward_transient=family.memory_backward_transient,
        block_params=[sum(p.numel() for n, p in b.named_parameters() if ".adapter." not in f".{n}") for b in blocks],
        block_linear_params=[sum(m.weight.numel() for m in b.modules() if isinstance(m, torch.nn.Linear))
                             for b in blocks],
    )


def estimate(shape: ModelShape, batch_size=1, dtype="bfloat16", checkpoint_blocks=0, fp8=False, eraser_rank=128,
             localization=False, device="cuda", frozen_copy=False, offload_activations=False, heads=None,
             blocks_to_swap=0) -> dict:
    """Peak bytes of one update, broken down by what holds them. ``frozen_copy`` adds a second backbone
    (the naive two-model setup the benchmark compares against). ``cpu_swapped_weights``, the weights
    ``blocks_to_swap`` keeps in CPU memory, is not part of the (GPU) peak."""
    b = 4 if dtype == "float32" else 2
    tokens = shape.video_tokens + shape.text_tokens if shape.joint_text else shape.video_tokens
    nd = batch_size * tokens * shape.width * b
    if fp8:
        fp8_bytes = shape.linear_params_in_blocks
        weights = (shape.params - shape.linear_params_in_blocks) * b + fp8_bytes + FP8_OVERHEAD * fp8_bytes
    else:
        weights = shape.params * b
    if frozen_copy:
        weights += shape.params * b
    swapped, host = swap_terms(shape, blocks_to_swap, b, fp8)
    weights -= swapped
    eraser_params = sum(2 * w * eraser_rank + eraser_rank + w for w in shape.eraser_widths)
    ckpt = max(0, min(checkpoint_blocks, shape.blocks))
    kept_inputs = 0 if offload_activations else ckpt * nd  # offloaded inputs live in CPU memory
    saved = (shape.blocks - ckpt) * shape.saved_per_block * nd + kept_inputs
    transient = shape.backward_transient * nd
    targets = batch_size * shape.video_tokens * shape.width * (2 * b + 4)
    backward = saved + transient + targets
    keys = tokens if shape.joint_text else shape.text_tokens
    chunk = min(MASK_CHUNK_ELEMENTS, batch_size * shape.heads * shape.video_tokens * keys)
    mask = 3 * 4 * chunk + targets if localization else 0
    breakdown = {
        "weights": weights,
        "erasers_and_adamw": 16 * eraser_params,
        "activations_saved": saved,
        "backward_transient": transient,
        "targets": targets,
        "localization_chunk": mask,
        "cpu_swapped_weights": host,
    }
    peak = weights + 16 * eraser_params + max(backward, mask)
    if str(device).startswith("cpu"):
        breakdown["python_runtime"] = CPU_RUNTIME
        peak += CPU_RUNTIME + host  # on a CPU the "host" copies share the one memory
        if offload_activations:  # on a CPU the "offloaded" inputs stay in the same memory
            peak += ckpt * nd
    breakdown["peak"] = peak
    return breakdown


def swap_terms(shape: ModelShape, blocks_to_swap: int, b: int, fp8: bool) -> tuple:
    """``(bytes of weights the GPU no longer holds, bytes kept in CPU memory)`` when the last ``blocks_to_swap``
    blocks are swapped: each swapped block leaves the GPU except the ``1 + PREFETCH_BLOCKS`` resident at a time
    (the largest swapped blocks count, to be safe)."""
    count = max(0, min(blocks_to_swap, shape.blocks))
    if count == 0:
        return 0, 0
    params, linear = shape.block_params[-count:], shape.block_linear_params[-count:]
    stored = [lin + (p - lin) * b if fp8 else p * b for p, lin in zip(params, linear)]  # as kept in CPU memory
    on_gpu = [s + FP8_OVERHEAD * lin if fp8 else s for s, lin in zip(stored, linear)]  # with fp8's compute copies
    window = sorted(on_gpu, reverse=True)[: 1 + PREFETCH_BLOCKS]
    return sum(on_gpu) - sum(window), sum(stored)


def copied_per_update(shape: ModelShape, blocks_to_swap: int, dtype="bfloat16", fp8=False) -> float:
    """Bytes copied to the GPU in one unlearn-only update: every swapped block once per pass (two frozen
    forwards, the eraser forward and its recomputation in backward)."""
    return 4 * swap_terms(shape, blocks_to_swap, 4 if dtype == "float32" else 2, fp8)[1]


def fewest_blocks_to_swap(shape: ModelShape, budget_bytes: float, **settings) -> int | None:
    """The fewest blocks to swap (every block checkpointed) for the update to fit ``budget_bytes``; None when
    even swapping every block does not fit. ``settings``: :func:`estimate`'s other arguments."""
    settings = {**settings, "checkpoint_blocks": shape.blocks}
    return next((n for n in range(shape.blocks + 1)
                 if estimate(shape, blocks_to_swap=n, **settings)["peak"] <= budget_bytes), None)


def fewest_checkpointed_blocks(family, transformer, resolved, config, budget_bytes) -> int:
    """The fewest blocks to checkpoint (fewest = fastest) for an update of a training run (its
    :class:`~receler.config.TrainConfig` and :class:`~receler.config.ResolvedTraining`) to fit ``budget_bytes``."""
    shape, common = run_shape(family, transformer, resolved, config)
    for count in range(shape.blocks + 1):
        if estimate(shape, checkpoint_blocks=count, **common)["peak"] <= budget_bytes:
            return count
    if config.blocks_to_swap in (None, 0) and not config.use_cpu_offload:  # else swapping blocks may make it fit
        need = estimate(shape, checkpoint_blocks=shape.blocks, **common)["peak"]
        logger.warning("even with every block checkpointed the update needs ~%.1f GiB (%.1f GiB free): add "
                       "--fp8_weights, --use_cpu_offload (swaps blocks' weights to CPU memory), fewer --num_frames or "
                       "a smaller size", need / 2**30, budget_bytes / 2**30)
    return shape.blocks


def run_shape(family, transformer, resolved, config) -> tuple:
    """``(ModelShape, estimate() settings)`` of a training run's update."""
    shape = model_shape(family, transformer, _pipe_of(family, transformer), resolved.num_frames, resolved.height,
                        resolved.width)
    common = dict(batch_size=config.batch_size, dtype=resolved.dtype, fp8=config.fp8_weights,
                  eraser_rank=config.eraser_rank, localization=config.alpha > 0,
                  offload_activations=config.offload_activations)
    return shape, common


def recommend(shape: ModelShape, budget: float, common: dict) -> list:
    """Settings from fastest to leanest, each ``{flags, peak, fits, blocks_to_swap, copied_per_update}``: without
    swap (checkpointing none, the fewest that fit, or all; fp8 storage; activation offload), then the fewest blocks
    to swap that fit with each of fp8 storage and activation offload, fewest bytes copied per update first (the
    copies overlap the compute, so fewer bytes is at least as fast)."""
    options, swapping = [], []
    for fp8, offload in ((False, False), (True, False), (False, True), (True, True)):
        def peak_of(count, swap=0):
            return estimate(shape, checkpoint_blocks=count, fp8=fp8, offload_activations=offload, blocks_to_swap=swap,
                            **common)["peak"]

        extra = ("--fp8_weights " if fp8 else "", " --offload_activations" if offload else "")
        fewest = next((c for c in range(shape.blocks + 1) if peak_of(c) <= budget), None)
        counts = [shape.blocks] if offload else sorted({0, shape.blocks} | ({fewest} if fewest is not None else set()))
        for count in counts:
            label = ("no checkpointing" if count == 0 else "--gradient_checkpointing" if count == shape.blocks
                     else f"--checkpoint_blocks {count}")
            peak = peak_of(count)
            options.append({"flags": extra[0] + label + extra[1], "peak": peak, "fits": peak <= budget,
                            "blocks_to_swap": 0, "copied_per_update": 0})
        swap = fewest_blocks_to_swap(shape, budget, fp8=fp8, offload_activations=offload, **common)
        if swap != 0:  # 0: checkpointing alone fits, listed above
            swap = shape.blocks if swap is None else swap
            peak = peak_of(shape.blocks, swap)
            swapping.append({"flags": f"{extra[0]}--gradient_checkpointing{extra[1]} --blocks_to_swap {swap}",
                             "peak": peak, "fits": peak <= budget, "blocks_to_swap": swap,
                             "copied_per_update": copied_per_update(shape, swap, common["dtype"], fp8)})
    return options + sorted(swapping, key=lambda o: o["copied_per_update"])


def _pipe_of(family, transformer):
    from receler.presets import pipeline_around

    return pipeline_around(family, transformer)


def load_shape(args) -> tuple:
    """``(family, transformer on the meta device, preset defaults)`` from ``--preset`` or ``--model_path``."""
    from receler.families import get_family, resolve_family
    from receler.presets import PRESETS, Preset, build_transformer

    if args.preset:
        preset = PRESETS[args.preset]
        family = get_family(preset.family)
        if preset.tiny:
            return family, family.build_tiny().transformer, preset
        return family, build_transformer(preset, torch.bfloat16, "meta"), preset
    family = resolve_family("auto", args.model_path)
    config_file = Path(args.model_path) / "transformer" / "config.json"
    if not config_file.exists():
        raise UserError(f"{config_file} does not exist: --model_path must be a diffusers pipeline folder with transformer/")
    config = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}
    preset = Preset("model", family.name, config)
    frames, height, width = family.default_video_size(_pipe_of(family, build_transformer(preset, torch.bfloat16, "meta")))
    preset = Preset("model", family.name, config, frames, height, width)
    return family, build_transformer(preset, torch.bfloat16, "meta"), preset


def parse_args(argv=None):
    from receler.presets import PRESETS

    p = argparse.ArgumentParser(description="Estimate the peak memory of one eraser-training update (weights, erasers "
                                "+ AdamW, activations with and without checkpointing, targets, mask chunks) and "
                                "recommend settings that fit a GPU.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model_path", help="a diffusers pipeline folder (only transformer/config.json is read)")
    src.add_argument("--preset", choices=tuple(PRESETS), help="a full-size configuration (see benchmarks/bench_train_step.py)")
    p.add_argument("--batch_size", type=int, default=1, help="prompts per update")
    p.add_argument("--num_frames", type=int, default=None, help="frames (default: the model's / preset's)")
    p.add_argument("--height", type=int, default=None, help="height in pixels (default: the model's / preset's)")
    p.add_argument("--width", type=int, default=None, help="width in pixels (default: the model's / preset's)")
    p.add_argument("--dtype", choices=tuple(DTYPE_BYTES), default="bfloat16", help="backbone dtype")
    p.add_argument("--eraser_rank", type=int, default=128, help="eraser rank")
    p.add_argument("--gradient_checkpointing", action="store_true", help="checkpoint every block")
    p.add_argument("--checkpoint_blocks", type=int, default=None, help="checkpoint only this many blocks")
    p.add_argument("--fp8_weights", action="store_true", help="fp8 weight storage")
    p.add_argument("--offload_activations", action="store_true", help="checkpointed blocks' inputs kept in CPU memory")
    p.add_argument("--two_copies", action="store_true",
                   help="a separate frozen copy of the backbone (the naive setup the benchmark compares against)")
    p.add_argument("--blocks_to_swap", type=_swap_count, default=None,
                   help="keep the last N blocks' weights in CPU memory, each copied to the GPU just before it runs "
                   "(implies --gradient_checkpointing); 'auto': the fewest that fit --gpu_memory")
    p.add_argument("--use_cpu_offload", "--cpu_offload", dest="use_cpu_offload", action="store_true",
                   help="as the trainer's: --blocks_to_swap auto (the text encoder it also keeps on the CPU is not "
                   "part of the update's memory anyway)")
    p.add_argument("--alpha", type=float, default=1.0, help="localization weight (0: no mask computation)")
    p.add_argument("--device", default="cuda", help="cuda or cpu (cpu adds the Python runtime's memory)")
    p.add_argument("--recommend", action="store_true", help="list settings from fastest to leanest and mark what fits")
    p.add_argument("--gpu_memory", type=float, default=24.0, help="GPU memory in GiB for --recommend")
    p.add_argument("--json", default=None, help="also write the estimate as JSON here")
    return p.parse_args(argv)


def _swap_count(value: str):
    if value == "auto":
        return value
    if not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of blocks, got {value!r}")
    return int(value)


def _gib(x):
    return f"{x / 2**30:.2f}"


def check_args(args) -> None:
    """The numeric flags and the --json path, before any model is built (a negative batch size would print
    negative GiB)."""
    from receler.flag_checks import check_floats, check_ints

    check_ints(args, ("batch_size", "eraser_rank"))
    check_ints(args, ("num_frames", "height", "width"), hint="; leave it out for the model's own")
    check_ints(args, ("checkpoint_blocks",), low=0)
    if args.blocks_to_swap != "auto":
        check_ints(args, ("blocks_to_swap",), low=0)
    check_floats(args, ("gpu_memory",), low=0.0, above=True)
    check_floats(args, ("alpha",), low=0.0)
    if args.json is not None and Path(args.json).is_dir():
        raise UserError(f"--json {args.json} is a folder; pass a file name such as {Path(args.json) / 'estimate.json'}")


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    check_args(args)
    family, transformer, preset = load_shape(args)
    frames = family.round_frames(args.num_frames or preset.num_frames)
    height, width = args.height or preset.height, args.width or preset.width
    shape = model_shape(family, transformer, _pipe_of(family, transformer), frames, height, width)
    common = dict(batch_size=args.batch_size, dtype=args.dtype, eraser_rank=args.eraser_rank,
                  localization=args.alpha > 0, device=args.device)
    budget = args.gpu_memory * 2**30
    swap = args.blocks_to_swap if args.blocks_to_swap is not None else ("auto" if args.use_cpu_offload else 0)
    if swap == "auto":
        swap = fewest_blocks_to_swap(shape, budget, fp8=args.fp8_weights, offload_activations=args.offload_activations,
                                     **common)
        if swap is None:
            print(f"--blocks_to_swap auto: even swapping every block does not fit {args.gpu_memory:g} GiB")
            swap = shape.blocks
    swap = min(swap, shape.blocks)
    ckpt = shape.blocks if args.gradient_checkpointing or swap else (args.checkpoint_blocks or 0)
    result = estimate(shape, checkpoint_blocks=ckpt, fp8=args.fp8_weights, frozen_copy=args.two_copies,
                      offload_activations=args.offload_activations, blocks_to_swap=swap, **common)
    name = args.preset or args.model_path
    print(f"{name}: {family.display_name}, {shape.params / 1e9:.2f} B parameters, {shape.blocks} blocks x {shape.width}, "
          f"{frames} frames x {height}x{width} = {shape.video_tokens} video tokens (+{shape.text_tokens} text)")
    print(f"settings: {args.dtype}{' + fp8 storage' if args.fp8_weights else ''}, {ckpt} of {shape.blocks} blocks "
          f"checkpointed{f', {swap} swapped' if swap else ''}, batch {args.batch_size}, rank {args.eraser_rank}")
    print("| part | GiB |\n|---|---|")
    for k, v in result.items():
        if k not in ("peak", "cpu_swapped_weights"):
            print(f"| {k} | {_gib(v)} |")
    print(f"| **peak** | **{_gib(result['peak'])}** |")
    if swap:
        print(f"swapped weights in pinned CPU memory: {_gib(result['cpu_swapped_weights'])} GiB; copied to the GPU per "
              f"update: ~{_gib(copied_per_update(shape, swap, args.dtype, args.fp8_weights))} GiB")
    report = {"model": name, "shape": vars(shape),
              "settings": {**vars(args), "checkpoint_blocks": ckpt, "blocks_to_swap": swap}, "estimate": result}
    if args.recommend:
        report["options"] = options = recommend(shape, budget, common)
        best = next((o for o in options if o["fits"]), None)
        print(f"\nsettings for a {args.gpu_memory:g} GiB GPU, roughly fastest first (checkpointing ~+25%, fp8 storage "
              f"~+0%, activation offload ~+10% per update; block swap last, by the weights it copies per update):")
        print("| settings | peak GiB | fits | GiB copied to the GPU per update |\n|---|---|---|---|")
        for o in options:
            copied = _gib(o["copied_per_update"]) if o["blocks_to_swap"] else ""
            print(f"| {o['flags']} | {_gib(o['peak'])} | {'yes' if o['fits'] else 'no'} | {copied} |")
        print(f"\nrecommended: {best['flags']}" if best else
              "\nnothing fits: reduce --num_frames or --height/--width, or use a GPU with more memory")
        report["recommendation"] = best
    if args.json:
        from receler.io_utils import atomic_write_json

        atomic_write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
