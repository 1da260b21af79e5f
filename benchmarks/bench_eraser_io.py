"""What writing an eraser folder as a unit costs: save and load times with and without the manifest.

    OMP_NUM_THREADS=1 python benchmarks/bench_eraser_io.py            # CogVideoX-2b, 5b and HunyuanVideo sizes

An eraser folder is saved as three files (``.safetensors``, ``.pt``, config). Before, each was written
atomically on its own; now (``receler.checkpoint.write_files_as_unit``) the weights are serialised to memory,
a manifest with the SHA-256 of the new files and of the files they replace is written first and the manifest
of the complete save last; a reader hashes the weights file it reads (and the config) against it. Rows:

- ``save, three atomic writes``: what the trainer did before (``save_file`` / ``torch.save`` to a temporary file
  each, renamed)
- ``save as a unit``: the same files through ``write_files_as_unit`` (into a folder holding a previous save, as
  every save after the first does: its hashes are read from the old manifest)
- ``load, no manifest``: ``read_eraser_folder`` of a published folder (no manifest)
- ``load, manifest checked``: the same folder with its manifest (one SHA-256 of each file read)

Random weights of the published layout, rank 128, float32; files in a temporary folder on the default disk.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import save as safetensors_bytes  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from receler.checkpoint import (CONFIG_NAME, MANIFEST_NAME, WEIGHTS_PT, WEIGHTS_SAFETENSORS,  # noqa: E402
                                read_eraser_folder, write_files_as_unit)
from receler.io_utils import atomic_write, atomic_write_json, torch_save_bytes  # noqa: E402

#: name -> (module name pattern, blocks, width): the published erasers' layouts
MODELS = {
    "CogVideoX-2b": ("transformer_blocks.{i}.attn1.adapter", 30, 1920),
    "CogVideoX-5b": ("transformer_blocks.{i}.attn1.adapter", 42, 3072),
    "HunyuanVideo": ("single_transformer_blocks.{i}.attn.adapter", 40, 3072),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated models (default: all)")
    p.add_argument("--rank", type=int, default=128, help="eraser rank (default: 128, the published erasers')")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row; the table shows the fastest (default: 3)")
    return p.parse_args(argv)


def eraser_state(pattern: str, blocks: int, width: int, rank: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {pattern.format(i=i): {"down.weight": torch.randn(rank, width, generator=g),
                                  "down.bias": torch.randn(rank, generator=g),
                                  "up.weight": torch.randn(width, rank, generator=g),
                                  "up.bias": torch.randn(width, generator=g)} for i in range(blocks)}


def fastest(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def save_three_writes(folder: Path, state: dict, config: dict) -> None:
    flat = {f"{name}.{key}": t for name, sd in state.items() for key, t in sd.items()}
    atomic_write(folder / WEIGHTS_SAFETENSORS, lambda tmp: save_file(flat, tmp, metadata={"format": "pt"}))
    atomic_write(folder / WEIGHTS_PT, lambda tmp: torch.save(state, tmp))
    atomic_write_json(folder / CONFIG_NAME, config)


def save_as_unit(folder: Path, state: dict, config: dict) -> None:
    flat = {f"{name}.{key}": t for name, sd in state.items() for key, t in sd.items()}
    write_files_as_unit(folder, {
        WEIGHTS_SAFETENSORS: safetensors_bytes(flat, metadata={"format": "pt"}),
        WEIGHTS_PT: torch_save_bytes(state),
        CONFIG_NAME: (json.dumps(config, indent=2) + "\n").encode("utf-8"),
    })


def main(argv=None):
    args = parse_args(argv)
    print(f"eraser folder I/O, rank {args.rank}, float32, fastest of {args.repeats} (seconds)\n")
    print("| model | weights MB | save, three atomic writes | save as a unit | load, no manifest | load, manifest checked |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        pattern, blocks, width = MODELS[name]
        state = eraser_state(pattern, blocks, width, args.rank)
        config = {"eraser_type": "adapter", "eraser_rank": args.rank}
        with tempfile.TemporaryDirectory() as tmp:
            old, new = Path(tmp) / "old", Path(tmp) / "new"
            old.mkdir()
            new.mkdir()
            t_old = fastest(lambda: save_three_writes(old, state, config), args.repeats)
            t_new = fastest(lambda: save_as_unit(new, state, config), args.repeats)
            t_load_plain = fastest(lambda: read_eraser_folder(old), args.repeats)
            t_load_checked = fastest(lambda: read_eraser_folder(new), args.repeats)
            assert (new / MANIFEST_NAME).exists() and not (old / MANIFEST_NAME).exists()
            megabytes = (new / WEIGHTS_SAFETENSORS).stat().st_size / 1e6
        print(f"| {name} | {megabytes:.0f} | {t_old:.2f} | {t_new:.2f} | {t_load_plain:.2f} | {t_load_checked:.2f} |")


if __name__ == "__main__":
    main()
