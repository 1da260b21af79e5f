"""The world benchmark: erase one concept from the bundled world model and measure what is gone and what survives.

    bash scripts/world_benchmark.sh OUT_DIR            (or: python -m receler.world.benchmark OUT_DIR [--quick])

Every eraser is trained with the project's own training CLI on prompts naming the target colour (preserve
prompts: the same scene in another colour); then a fixed prompt set is rendered clean and erased with the
same seeds and scored by the world's pixel classifier:

- ``target_rate_clean`` / ``target_rate_erased``: fraction of videos for target prompts that show the target
- ``other_accuracy_clean`` / ``other_accuracy_erased``: prompted-colour accuracy on the other prompts
- ``other_psnr``: PSNR (dB) between clean and erased renders of the other prompts (100 = identical)

Rows: the full method (``full``), the loss ablations (``unlearn_only``, ``unlearn_loc``, ``unlearn_pre``), the
training-free baselines (``negative_prompt`` at the guidance it needs, ``safree``), and the attack rows: the full
eraser and an adversarially trained one under the same learned soft-prompt attack, scored after each budget
(``target_rate_attacked_by_steps``; ``target_rate_attacked`` is the largest budget's).
Results go to stdout as a table and to ``OUT_DIR/world_benchmark.json`` (one object per row, keyed by row name).
"""

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..erasers.utils import erasers_disabled
from ..errors import UserError, cli_entry, setup_logging
from ..io_utils import atomic_write_json
from . import model as world
from .evaluate import compare, score
from .files import write_prompt_files
from .scenes import COLORS, evaluation_prompts

logger = logging.getLogger("receler.world.benchmark")

ERASER_ROWS = {  # row -> training flags on top of the shared ones
    "full": ["--alpha", "1.0", "--beta", "1.0"],
    "unlearn_only": ["--alpha", "0", "--beta", "0"],
    "unlearn_loc": ["--alpha", "1.0", "--beta", "0"],
    "unlearn_pre": ["--alpha", "0", "--beta", "1.0"],
}
ATTACK_ROWS = {"full_attacked": "full", "adversarial_attacked": "adversarial"}
ALL_ROWS = tuple(ERASER_ROWS) + ("negative_prompt", "safree", "adversarial") + tuple(ATTACK_ROWS)


class Bench:
    """Holds the model, the prompt set and the clean renders every row compares against."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.output_dir)
        self.items = evaluation_prompts(target_color=args.target, quick=args.quick)
        self.pipe = world.load_world_pipeline(args.model_path)
        self.clean = {}  # guidance -> videos

    def render(self, guidance=1.0, negative_prompt=None, embeds=None) -> list:
        if embeds is not None:
            return render_embeds(self.pipe, self.items, embeds, self.args, guidance)
        return world.render_world(self.pipe, self.items, guidance_scale=guidance, num_inference_steps=self.args.steps,
                                  num_frames=self.args.num_frames, height=self.args.height, width=self.args.width,
                                  negative_prompt=negative_prompt)

    def clean_videos(self, guidance=1.0) -> list:
        if guidance not in self.clean:
            from ..erasers.utils import DisableEraser

            with DisableEraser(self.pipe.transformer):
                self.clean[guidance] = self.render(guidance)
        return self.clean[guidance]

    def row(self, name, erased: list, guidance: float, clean=None, extra=None) -> dict:
        clean = clean if clean is not None else self.clean_videos(guidance)
        result = {"guidance": guidance, **compare(clean, erased, self.items, self.args.target), **(extra or {})}
        logger.info("%s: %s", name, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))
        return result


def render_embeds(pipe, items, embeds: list, args, guidance) -> list:
    """Render with precomputed per-prompt text conditioning (the attack's soft prompts), batched."""
    videos = []
    text_length = pipe.transformer.config.max_text_seq_length
    for start in range(0, len(items), world.RENDER_BATCH_SIZE):
        chunk = items[start : start + world.RENDER_BATCH_SIZE]
        out = pipe(prompt_embeds=torch.cat(embeds[start : start + len(chunk)]), guidance_scale=guidance,
                   num_inference_steps=args.steps, num_frames=args.num_frames, height=args.height, width=args.width,
                   max_sequence_length=text_length, output_type="np",
                   generator=[torch.Generator().manual_seed(it["seed"]) for it in chunk]).frames
        videos.extend(world.to_uint8_video(np.asarray(v)) for v in out)
    return videos


def train_eraser(bench: Bench, name: str, flags: list) -> tuple:
    """Train one eraser with the project's training CLI; returns ``(folder, seconds, seconds per update)``."""
    from ..train_unlearning_prompt_only import main as train_main

    args = bench.args
    folder = bench.out / "erasers" / name
    pairs, _ = write_prompt_files(bench.out, args.target, args.quick)
    argv = ["--model_path", str(args.model_path), "--target_concept", args.target, "--prompts_file", str(pairs),
            "--output_dir", str(folder), "--num_frames", str(args.num_frames), "--height", str(args.height),
            "--width", str(args.width), "--num_inference_steps", str(args.steps), "--max_steps", str(args.train_steps),
            "--num_epochs", "1000", "--eraser_rank", str(args.eraser_rank), "--learning_rate", str(args.learning_rate),
            "--eta", str(args.eta), "--batch_size", str(args.batch_size), "--save_every", "0", "--log_every", "50",
            "--seed", str(args.seed), "--device", "cpu", "--dtype", "float32", *flags]
    start = time.perf_counter()
    train_main(argv)
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    per_update = float(np.median([r["seconds"] for r in log])) if log else None
    return folder, seconds, per_update


def erased_videos(bench: Bench, folder) -> list:
    from ..checkpoint import load_erasers
    from ..families import get_family

    family = get_family("cogvideox")
    load_erasers(bench.pipe.transformer, family.layout, folder)
    return bench.render(1.0)


def attacked_videos(bench: Bench, folder) -> tuple:
    """The learned soft-prompt attack against an eraser (same budgets for every eraser). One run to the largest
    budget; the soft prompt as it stood after each smaller budget is what a run with that budget would have
    learned (same seed, same steps so far). Returns ``({budget: videos}, losses)``."""
    from ..attack import attack_prompts
    from ..checkpoint import load_erasers
    from ..families import get_family

    args = bench.args
    family = get_family("cogvideox")
    load_erasers(bench.pipe.transformer, family.layout, folder)
    targets = [it for it in bench.items if it["is_target"]]
    snapshots = {}

    def snapshot(step, loss, soft):
        if step + 1 in args.attack_steps:
            snapshots[step + 1] = soft.vectors.detach().clone()

    soft, positions, conds, losses = attack_prompts(
        family, bench.pipe, [it["prompt"] for it in targets], args.attack_tokens, max(args.attack_steps),
        args.attack_lr, args.num_frames, args.height, args.width, args.steps, seed=args.seed, loss_target="velocity",
        progress=snapshot)
    with torch.no_grad():
        plain = [family.encode_prompts(bench.pipe, [it["prompt"]], "cpu")["encoder_hidden_states"] for it in bench.items]
    videos = {}
    for budget, vectors in snapshots.items():
        attacked = {it["prompt"]: family.with_soft_tokens(conds[k], positions[k : k + 1], vectors)["encoder_hidden_states"]
                    for k, it in enumerate(targets)}
        with torch.no_grad():
            embeds = [attacked.get(it["prompt"], p) for it, p in zip(bench.items, plain)]
            videos[budget] = render_embeds(bench.pipe, bench.items, embeds, args, 1.0)
    return videos, losses


def run(args) -> dict:
    bench = Bench(args)
    rows, results = [r for r in args.rows.split(",") if r], {}
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        raise UserError(f"unknown --rows {', '.join(unknown)}; choose from {', '.join(ALL_ROWS)}")
    erasers = {}

    def eraser(name):
        if name not in erasers:
            flags = ERASER_ROWS.get(name) or ["--alpha", "1.0", "--beta", "1.0", "--adversarial",
                                              "--adv_num_tokens", str(args.attack_tokens),
                                              *shlex.split(args.adversarial_flags)]
            erasers[name] = train_eraser(bench, name, flags)
        return erasers[name]

    for name in rows:
        if name in ERASER_ROWS or name == "adversarial":
            folder, seconds, per_update = eraser(name)
            results[name] = bench.row(name, erased_videos(bench, folder), 1.0,
                                      extra={"train_seconds": seconds, "seconds_per_update": per_update})
        elif name == "negative_prompt":  # baselines run on the unchanged model
            g = args.negative_guidance
            with erasers_disabled(bench.pipe.transformer):
                clean = bench.clean_videos(g)
                videos = bench.render(g, negative_prompt=args.target)
            results[name] = bench.row(name, videos, g, clean=clean)
        elif name == "safree":
            with erasers_disabled(bench.pipe.transformer):
                videos = safree_videos(bench)
            results[name] = bench.row(name, videos, 1.0)
        elif name in ATTACK_ROWS:
            base = ATTACK_ROWS[name]
            folder, _, _ = eraser(base)
            videos, losses = attacked_videos(bench, folder)
            erased = erased_videos(bench, folder)
            fifth = max(1, len(losses) // 5)
            by_budget = {str(b): score(v, bench.items, args.target)["target_rate"] for b, v in sorted(videos.items())}
            results[name] = bench.row(name, erased, 1.0, extra={
                "attack_steps": max(args.attack_steps), "attack_tokens": args.attack_tokens,
                "attack_loss_first": sum(losses[:fifth]) / fifth,  # means over the first / last fifth of the steps
                "attack_loss_last": sum(losses[-fifth:]) / fifth,
                "target_rate_attacked": by_budget[str(max(args.attack_steps))],  # the largest budget: worst case
                "target_rate_attacked_by_steps": by_budget})
    report = {"model_path": str(args.model_path), "target": args.target, "quick": args.quick,
              "num_prompts": len(bench.items), "settings": {k: v for k, v in vars(args).items() if k != "verbose"},
              "rows": results}
    atomic_write_json(Path(args.output_dir) / "world_benchmark.json", report)
    print(table(results))
    return report


def safree_videos(bench: Bench) -> list:
    """SAFREE with its defaults (filtered embedding for the first denoising steps), one prompt at a time."""
    from ..baselines.safree import Safree
    from ..families import get_family

    args = bench.args
    safree = Safree(get_family("cogvideox"), bench.pipe, [args.target])
    videos = []
    for it in bench.items:
        result = safree.filter(it["prompt"])
        with safree.applied(bench.pipe, result) as kwargs, torch.no_grad():
            out = bench.pipe(guidance_scale=1.0, num_inference_steps=args.steps, num_frames=args.num_frames,
                             height=args.height, width=args.width, output_type="np",
                             max_sequence_length=bench.pipe.transformer.config.max_text_seq_length,
                             generator=torch.Generator().manual_seed(it["seed"]), **kwargs).frames
        videos.append(world.to_uint8_video(np.asarray(out[0])))
    return videos


def table(results: dict) -> str:
    budgets = next((list(r["target_rate_attacked_by_steps"]) for r in results.values()
                    if "target_rate_attacked_by_steps" in r), [])
    head = ("| row | guidance | target rate clean | target rate erased | under attack "
            f"({' / '.join(budgets) or '-'} steps) | other acc. clean | other acc. erased | other PSNR (dB) |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, r in results.items():
        attacked = " / ".join(_pct(v) for v in r.get("target_rate_attacked_by_steps", {}).values())
        lines.append(
            f"| {name} | {r['guidance']:g} | {_pct(r['target_rate_clean'])} | {_pct(r['target_rate_erased'])} | "
            f"{attacked} | {_pct(r['other_accuracy_clean'])} | "
            f"{_pct(r['other_accuracy_erased'])} | {r['other_psnr']:.1f} |")
    return "\n".join(lines)


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.0f}%"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m receler.world.benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("output_dir", help="where erasers, world_benchmark.json and logs go")
    p.add_argument("--quick", action="store_true", help="the reduced prompt set (14 prompts) and fewer updates, for CI")
    p.add_argument("--rows", default=",".join(ALL_ROWS), help=f"comma-separated rows to run ({', '.join(ALL_ROWS)})")
    p.add_argument("--model_path", default=str(world.WORLD_MODEL_DIR), help="the world model folder")
    p.add_argument("--target", default="red", choices=tuple(COLORS), help="the colour to erase")
    p.add_argument("--seed", type=int, default=42, help="training and attack seed (renders use each prompt's own seed)")
    p.add_argument("--steps", type=int, default=world.NUM_INFERENCE_STEPS, help="denoising steps of renders and training")
    p.add_argument("--num_frames", type=int, default=world.NUM_FRAMES, help="frames")
    p.add_argument("--height", type=int, default=world.HEIGHT, help="height")
    p.add_argument("--width", type=int, default=world.WIDTH, help="width")
    p.add_argument("--train_steps", type=int, default=None, help="updates per eraser (default: 300, --quick: 60)")
    p.add_argument("--eraser_rank", type=int, default=16, help="eraser rank")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="eraser learning rate")
    p.add_argument("--eta", type=float, default=3.0, help="negative guidance strength")
    p.add_argument("--batch_size", type=int, default=4, help="prompts per update")
    p.add_argument("--negative_guidance", type=float, default=4.0, help="guidance of the negative-prompt baseline")
    p.add_argument("--attack_tokens", type=int, default=12, help="soft tokens of the attack (and of adversarial training)")
    p.add_argument("--attack_steps", default=None,
                   help="attack budgets in steps, comma-separated; one attack run, scored after each "
                        "(default: 100,300,1000; --quick: 2,20)")
    p.add_argument("--attack_lr", type=float, default=2e-2, help="attack learning rate")
    p.add_argument("--adversarial_flags", default="",
                   help="extra training flags of the adversarial row, e.g. '--adv_steps 4 --adv_weight 0.5'")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    args.train_steps = args.train_steps or (60 if args.quick else 300)
    budgets = args.attack_steps or ("2,20" if args.quick else "100,300,1000")
    try:
        args.attack_steps = sorted({int(b) for b in budgets.split(",") if b.strip()})
    except ValueError:
        p.error(f"--attack_steps {budgets!r}: give positive step counts separated by commas, e.g. 100,300,1000")
    if not args.attack_steps or args.attack_steps[0] < 1:
        p.error(f"--attack_steps {budgets!r}: give positive step counts separated by commas, e.g. 100,300,1000")
    return args


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    return run(args)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
