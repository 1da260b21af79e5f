"""The world benchmark: erase a concept from the bundled world model and measure what is gone, what replaced it,
and what survives, on held-out prompts.

    bash scripts/world_benchmark.sh OUT_DIR [--quick]          (or: python -m receler.world.benchmark OUT_DIR ...)
    python -m receler.world.benchmark OUT_DIR --targets red,yellow,green,cyan,blue,purple --seeds 0,1,2
    python -m receler.world.benchmark OUT_DIR --targets triangle,left,"red triangle"

For every target (a colour, a shape, a direction of motion or a combination such as ``red triangle``) and
training seed, each row's eraser is trained with the project's own training CLI on target captions of the
*seen* combinations only (preserve prompts: the same scene with another value); then the target's evaluation
prompts (seen captions with new seeds, held-out captions, two-shape scenes, and every other value of the
target's kind, on both backgrounds) are rendered clean and erased with the same seeds and read by the world's
pixel classifier (:mod:`receler.world.measure` defines every number).

Rows: the full method (``full``), the loss ablations (``unlearn_only``, ``unlearn_loc``, ``unlearn_pre``), the
training-free baselines (``negative_prompt`` at the guidance it needs; SAFREE as adapted here, ``safree``, at
guidance 1, and as its authors run it, ``safree_official``, with the keyword negative prompt at the same guidance as
``negative_prompt``), adversarial training
(``adversarial``) and the attack rows (``full_attacked``, ``adversarial_attacked``: the same learned soft-prompt
attack, scored after each budget). A single-target run does every row by default; several targets or seeds do
``full`` only.

Writes one JSON per (target, seed) under ``OUT_DIR/runs/`` (a rerun reuses those whose settings match, so an
interrupted benchmark resumes), ``OUT_DIR/world_benchmark.json`` with all of them plus the mean and worst over
targets x seeds, and prints the tables. ``--shard K/N`` (or ``accelerate launch``) splits the (target, seed) runs
across processes or array jobs; the shard that finishes last writes the tables.
"""

import argparse
import hashlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..erasers.utils import erasers_disabled
from ..errors import cli_entry, setup_logging
from ..io_utils import atomic_write, atomic_write_json, atomic_write_text
from . import model as world
from .files import write_prompt_files
from .measure import measure, measure_multi, read_video, shows_target
from .targets import KINDS, MultiTarget, anchor_items, check_anchor_to, evaluation_items, parse_targets

logger = logging.getLogger("receler.world.benchmark")

ERASER_ROWS = {  # row -> training options on top of the shared ones
    "full": {"alpha": 1.0, "beta": 1.0},
    "unlearn_only": {"alpha": 0.0, "beta": 0.0},
    "unlearn_loc": {"alpha": 1.0, "beta": 0.0},
    "unlearn_pre": {"alpha": 0.0, "beta": 1.0},
}
ATTACK_ROWS = {"full_attacked": "full", "adversarial_attacked": "adversarial"}
SAFREE_ROWS = {"safree": "adapted", "safree_official": "official"}
ALL_ROWS = tuple(ERASER_ROWS) + ("negative_prompt",) + tuple(SAFREE_ROWS) + ("adversarial",) + tuple(ATTACK_ROWS)
# Several concepts at once (targets joined by '+'): one eraser trained on all of them, or one eraser per concept
# trained alone and stacked (summed) at inference.
MULTI_ROWS = ("multi", "stacked")


class Bench:
    """The model and the render settings; clean renders are cached per target (they do not depend on the seed)."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.output_dir)
        self.pipe = world.load_world_pipeline(args.model_path)
        self._clean = {}  # (target name, guidance) -> videos

    def render(self, items, guidance=1.0, negative_prompt=None) -> list:
        a = self.args
        return world.render_world(self.pipe, items, guidance_scale=guidance, num_inference_steps=a.steps,
                                  num_frames=a.num_frames, height=a.height, width=a.width,
                                  negative_prompt=negative_prompt)

    def clean_videos(self, target, items, guidance=1.0, name=None) -> list:
        """Renders of ``items`` with every eraser off, kept per (``name``, default the target's, guidance)."""
        name = name or target.name
        key = (name, guidance)
        if key not in self._clean:
            cached = self._cache_file(name, items, guidance)
            if cached is not None and cached.is_file():
                with np.load(cached) as data:
                    self._clean[key] = list(data["videos"])
            else:
                with erasers_disabled(self.pipe.transformer):
                    self._clean[key] = self.render(items, guidance)
                if cached is not None:
                    atomic_write(cached, lambda tmp: _save_videos(tmp, self._clean[key]))
        return self._clean[key]

    def _cache_file(self, name, items, guidance):
        """``--clean_cache``: clean renders shared by benchmark runs (a sweep's settings) of the same model and
        prompts; the name hashes everything a clean render depends on."""
        if not self.args.clean_cache:
            return None
        a = self.args
        model = Path(a.model_path) / "transformer" / "diffusion_pytorch_model.safetensors"
        stamp = model.stat().st_mtime_ns if model.is_file() else 0
        what = json.dumps([str(Path(a.model_path).resolve()), stamp, a.steps, a.num_frames, a.height, a.width,
                           guidance, [(it["prompt"], it["seed"]) for it in items]])
        digest = hashlib.sha256(what.encode()).hexdigest()[:16]
        folder = Path(a.clean_cache)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{_slug(name)}_g{guidance:g}_{digest}.npz"


def _save_videos(path, videos) -> None:
    with open(path, "wb") as f:  # a file object: given a name, numpy would append ".npz" to it
        np.savez_compressed(f, videos=np.stack(videos))


def render_embeds(bench: Bench, items, embeds: list, guidance) -> list:
    """Render with precomputed per-prompt text conditioning (the attack's soft prompts), batched."""
    a, pipe = bench.args, bench.pipe
    videos = []
    for start in range(0, len(items), world.RENDER_BATCH_SIZE):
        chunk = items[start : start + world.RENDER_BATCH_SIZE]
        out = pipe(prompt_embeds=torch.cat(embeds[start : start + len(chunk)]), guidance_scale=guidance,
                   num_inference_steps=a.steps, num_frames=a.num_frames, height=a.height, width=a.width,
                   max_sequence_length=pipe.transformer.config.max_text_seq_length, output_type="np",
                   generator=[torch.Generator().manual_seed(it["seed"]) for it in chunk]).frames
        videos.extend(world.to_uint8_video(np.asarray(v)) for v in out)
    return videos


def flag_overrides(flags: str) -> dict:
    """The training options a string of the training CLI's flags sets, e.g. ``'--mask_mode average'``."""
    from ..train_unlearning_prompt_only import parse_args

    required = ["--model_path", "m", "--target_concept", "c", "--output_dir", "o"]
    default, given = parse_args(required).to_dict(), parse_args(required + shlex.split(flags)).to_dict()
    return {k: v for k, v in given.items() if v != default[k]}


def train_eraser(bench: Bench, target, seed: int, name: str, options: dict, prompts_for=None) -> tuple:
    """Train one eraser for ``target`` (a colour, ..., or several joined: one eraser for all) with the project's
    own :func:`~receler.training.train` on the benchmark's pipeline; ``prompts_for`` names the run whose folder
    holds it (default: ``target``). Returns ``(folder, seconds, seconds per update)``."""
    from ..config import TrainConfig
    from ..training import train

    a = bench.args
    folder = bench.out / "erasers" / f"{_slug((prompts_for or target).name)}_seed{seed}" / name
    folder.mkdir(parents=True, exist_ok=True)
    pairs, _ = write_prompt_files(folder, target, a.quick, anchors=a.anchors, anchor_to=a.anchor_to)
    concepts = ",".join(t.name for t in target.components) if isinstance(target, MultiTarget) else target.name
    output = folder / "eraser"
    shared = dict(num_frames=a.num_frames, height=a.height, width=a.width, num_inference_steps=a.steps,
                  max_steps=a.train_steps, num_epochs=1000, eraser_rank=a.eraser_rank, learning_rate=a.learning_rate,
                  eta=a.eta, batch_size=a.batch_size, save_every=0, log_every=50, seed=seed, device="cpu",
                  dtype="float32")
    config = TrainConfig(
        model_path=str(a.model_path), target_concept=concepts, prompts_file=str(pairs), output_dir=str(output),
        overwrite=True,  # a rerun replaces an eraser whose result was not kept (other settings, or interrupted)
        **{**shared, **options, **flag_overrides(a.train_flags)})
    start = time.perf_counter()
    train(config, pipe=bench.pipe)
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    per_update = float(np.median([r["seconds"] for r in log])) if log else None
    return output, seconds, per_update


def erased_videos(bench: Bench, folder, items) -> list:
    """Render ``items`` with the eraser in ``folder`` (or the stack of erasers in a list of folders)."""
    from ..checkpoint import load_eraser_stack
    from ..families import get_family

    load_eraser_stack(bench.pipe.transformer, get_family("cogvideox").layout, folder if isinstance(folder, list)
                      else [folder])
    return bench.render(items, 1.0)


def attacked_videos(bench: Bench, folder, items, seed: int) -> tuple:
    """The learned soft-prompt attack against an eraser (same budgets for every eraser). One run to the largest
    budget; the soft prompt as it stood after each smaller budget is what a run with that budget would have
    learned (same seed, same steps so far). Returns ``({budget: videos of the attacked prompts}, losses)``: the
    single-shape target prompts (two-shape captions leave no room for the soft tokens)."""
    from ..attack import attack_prompts
    from ..checkpoint import load_erasers
    from ..families import get_family

    a = bench.args
    family = get_family("cogvideox")
    load_erasers(bench.pipe.transformer, family.layout, folder)
    targets = [it for it in items if it["group"] in ("seen", "unseen")]
    snapshots = {}

    def snapshot(step, loss, soft):
        if step + 1 in a.attack_steps:
            snapshots[step + 1] = soft.vectors.detach().clone()

    soft, positions, conds, losses = attack_prompts(
        family, bench.pipe, [it["prompt"] for it in targets], a.attack_tokens, max(a.attack_steps), a.attack_lr,
        a.num_frames, a.height, a.width, a.steps, seed=seed, loss_target="velocity", progress=snapshot)
    videos = {}
    for budget, vectors in snapshots.items():
        with torch.no_grad():
            embeds = [family.with_soft_tokens(conds[k], positions[k : k + 1], vectors)["encoder_hidden_states"]
                      for k in range(len(targets))]
            videos[budget] = render_embeds(bench, targets, embeds, 1.0)
    return videos, losses


def safree_videos(bench: Bench, target, items, variant: str, guidance: float) -> list:
    """SAFREE (``adapted``: this project's variant at guidance 1; ``official``: the authors' rules with the keyword
    negative prompt at classifier-free guidance), one prompt at a time."""
    from ..baselines.safree import Safree
    from ..families import get_family

    a = bench.args
    safree = Safree(get_family("cogvideox"), bench.pipe, [target.name], variant=variant)
    call = safree.pipeline_kwargs(guidance)
    videos = []
    for it in items:
        result = safree.filter(it["prompt"], num_inference_steps=a.steps)
        with safree.applied(bench.pipe, result) as kwargs, torch.no_grad():
            out = bench.pipe(**call, num_inference_steps=a.steps, num_frames=a.num_frames,
                             height=a.height, width=a.width, output_type="np",
                             max_sequence_length=bench.pipe.transformer.config.max_text_seq_length,
                             generator=torch.Generator().manual_seed(it["seed"]), **kwargs).frames
        videos.append(world.to_uint8_video(np.asarray(out[0])))
    return videos


def run_multi(bench: Bench, multi, seed: int, rows: list) -> dict:
    """The rows of several concepts erased together: one eraser for all (``multi``, as many updates as the stack's
    erasers together) and a stack of one eraser per concept (``stacked``); each measured per concept."""
    a = bench.args
    items = evaluation_items(multi, quick=a.quick)
    clean = bench.clean_videos(multi, items)
    results = {}
    for name in rows:
        if name == "multi":
            folder, seconds, per_update = train_eraser(bench, multi, seed, name, {
                **ERASER_ROWS["full"], "max_steps": a.train_steps * len(multi.components)})
            folders = [folder]
        else:
            trained = [train_eraser(bench, target, seed, f"stacked/{_slug(target.name)}", ERASER_ROWS["full"],
                                    prompts_for=multi) for target in multi.components]
            folders = [t[0] for t in trained]
            seconds, per_update = sum(t[1] for t in trained), float(np.median([t[2] for t in trained]))
        result = {"guidance": 1.0, **measure_multi(clean, erased_videos(bench, folders, items), items, multi),
                  "train_seconds": seconds, "seconds_per_update": per_update}
        logger.info("%s seed %d %s: %s", multi.name, seed, name, _brief(result))
        results[name] = result
    return results


def run_target(bench: Bench, target, seed: int, rows: list) -> dict:
    """Every requested row for one target and training seed: ``{row: measurement}``."""
    if isinstance(target, MultiTarget):
        return run_multi(bench, target, seed, [r for r in rows if r in MULTI_ROWS] or list(MULTI_ROWS))
    rows = [r for r in rows if r in ALL_ROWS]
    a = bench.args
    items = evaluation_items(target, quick=a.quick)
    erasers, results = {}, {}

    def eraser(name):
        if name not in erasers:
            options = ERASER_ROWS.get(name) or {"alpha": 1.0, "beta": 1.0, "adversarial": True,
                                                "adv_num_tokens": a.attack_tokens, **flag_overrides(a.adversarial_flags)}
            erasers[name] = train_eraser(bench, target, seed, name, options)
        return erasers[name]

    def anchor_renders():  # what the anchored eraser should draw: the clean model on each anchor prompt
        anchor = anchor_items(items, target, a.anchor_to)
        name = f"{target.name} anchors" + (f" ({a.anchor_to})" if a.anchor_to else "")
        videos = bench.clean_videos(target, anchor, 1.0, name=name)
        return {it["index"]: video for it, video in zip(anchor, videos)}

    def row(name, erased, guidance, clean=None, extra=None, anchored=False):
        clean = clean if clean is not None else bench.clean_videos(target, items, guidance)
        anchors = anchor_renders() if anchored else None
        result = {"guidance": guidance, **measure(clean, erased, items, target, anchors), **(extra or {})}
        logger.info("%s seed %d %s: %s", target.name, seed, name, _brief(result))
        return result

    for name in rows:
        if name in ERASER_ROWS or name == "adversarial":
            folder, seconds, per_update = eraser(name)
            results[name] = row(name, erased_videos(bench, folder, items), 1.0, anchored=a.anchors,
                                extra={"train_seconds": seconds, "seconds_per_update": per_update})
        elif name == "negative_prompt":  # baselines run on the unchanged model
            g = a.negative_guidance
            with erasers_disabled(bench.pipe.transformer):
                clean = bench.clean_videos(target, items, g)
                videos = bench.render(items, g, negative_prompt=target.name)
            results[name] = row(name, videos, g, clean=clean)
        elif name in SAFREE_ROWS:
            variant = SAFREE_ROWS[name]
            g = 1.0 if variant == "adapted" else a.negative_guidance  # the official variant guides away from the keywords
            with erasers_disabled(bench.pipe.transformer):
                clean = bench.clean_videos(target, items, g)
                videos = safree_videos(bench, target, items, variant, g)
            results[name] = row(name, videos, g, clean=clean)
        elif name in ATTACK_ROWS:
            folder, _, _ = eraser(ATTACK_ROWS[name])
            videos, losses = attacked_videos(bench, folder, items, seed)
            by_budget = {str(b): float(np.mean([shows_target(read_video(v), target) for v in vs]))
                         for b, vs in sorted(videos.items())}
            fifth = max(1, len(losses) // 5)
            results[name] = row(name, erased_videos(bench, folder, items), 1.0, extra={
                "attack_steps": max(a.attack_steps), "attack_tokens": a.attack_tokens,
                "attack_loss_first": sum(losses[:fifth]) / fifth,  # means over the first / last fifth of the steps
                "attack_loss_last": sum(losses[-fifth:]) / fifth,
                # On the single-shape target prompts; the largest budget is the worst case.
                "target_shown_attacked": by_budget[str(max(a.attack_steps))],
                "target_shown_attacked_by_steps": by_budget})
    return results


def _saved_run(path, settings):
    """The result saved at ``path`` if it was computed with ``settings``, else None."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            return saved
    return None


def run(args) -> dict | None:
    """Every (target, seed) run of this process's shard, then the tables once every run of the plan is saved
    (a shard that finishes before the others leaves the tables to the last one, or to a rerun without --shard)."""
    from ..sharding import current_shard

    shard = current_shard(args.shard)
    runs_dir = Path(args.output_dir) / "runs"
    plan = [(target, seed, f"{target.name}/seed{seed}", runs_dir / f"{_slug(target.name)}_seed{seed}.json",
             _run_settings(args, target, seed)) for target in args.targets for seed in args.seeds]
    bench = None
    for index, (target, seed, key, path, settings) in enumerate(plan):
        if _saved_run(path, settings) is not None:
            logger.info("%s: reusing %s", key, path)
        elif shard.holds(index):
            bench = bench or Bench(args)
            start = time.perf_counter()
            rows = run_target(bench, target, seed, args.rows)
            atomic_write_json(path, {"target": target.name, "target_kind": target.kind, "seed": seed,
                                     "settings": settings, "rows": rows, "seconds": time.perf_counter() - start})
    # Read back in plan order: other shards may have saved theirs meanwhile, and the last to finish writes the tables.
    runs = {key: saved for _, _, key, path, settings in plan if (saved := _saved_run(path, settings)) is not None}
    if len(runs) < len(plan):
        logger.info("shard %s finished its runs; %d of %d runs are saved, so the tables are left to the shard that "
                    "finishes last (or rerun without --shard to write them)", shard, len(runs), len(plan))
        return None
    report = {"model_path": str(args.model_path), "quick": args.quick, "rows": args.rows,
              "settings": {k: v for k, v in vars(args).items() if k not in ("verbose", "targets")}
              | {"targets": [t.name for t in args.targets]},
              "runs": runs, "summary": summarize(runs)}
    out = Path(args.output_dir)
    atomic_write_json(out / "world_benchmark.json", report)
    tables = "\n\n".join(t for t in (table(runs), multi_table(runs), summary_table(report["summary"])) if t)
    atomic_write_text(out / "world_benchmark.md", tables + "\n")
    print(tables)
    return report


def _run_settings(args, target, seed) -> dict:
    """What a (target, seed) result depends on: a saved run is reused only when all of it matches."""
    keep = ("model_path", "quick", "rows", "steps", "num_frames", "height", "width", "train_steps", "eraser_rank",
            "learning_rate", "eta", "batch_size", "negative_guidance", "attack_tokens", "attack_steps", "attack_lr",
            "adversarial_flags", "train_flags", "anchors")
    named = {"anchor_to": args.anchor_to} if args.anchor_to else {}  # absent otherwise: older saved runs still match
    return json.loads(json.dumps({k: getattr(args, k) for k in keep} | named | {"target": target.name, "seed": seed}))


# ------------------------------------------------------------------------------------------ tables

SUMMARY_METRICS = {  # name -> (path into a row, which way is good)
    "shown_seen": (("target_shown", "erased", "seen"), "low"),
    "shown_unseen": (("target_shown", "erased", "unseen"), "low"),
    "shown_two_shape": (("target_shown", "erased", "two_shape"), "low"),
    "substitute_share": (("substitution", "share"), "low"),
    "anchor_follow": (("substitution", "anchor_follow"), "high"),
    "rest_all": (("rest_of_prompt", "all"), "high"),
    "rest_shape": (("rest_of_prompt", "shape"), "high"),
    "rest_direction": (("rest_of_prompt", "direction"), "high"),
    "rest_background": (("rest_of_prompt", "background"), "high"),
    "area_ratio": (("rest_of_prompt", "area_ratio"), "near1"),
    "other_kept_two_shape": (("two_shape_other_kept", "erased"), "high"),
    "other_acc_worst_drop": (None, "low"),
    "other_acc_worst_cell": (("other_accuracy", "erased", "worst_class_background"), "high"),
    "psnr_mean": (("other_psnr", "mean"), "high"),
    "psnr_worst": (("other_psnr", "worst"), "high"),
}


# The goals an eraser should meet on the world benchmark, checked on the worst run over targets x seeds.
GOALS = {
    "shown_seen": ("<=", 0.10),
    "shown_unseen": ("<=", 0.10),
    "shown_two_shape": ("<=", 0.10),
    "substitute_share": ("<=", 0.50),  # replaced by anchor_follow for erasers trained with anchors
    "anchor_follow": (">=", 0.80),
    "rest_shape": (">=", 0.90),
    "rest_direction": (">=", 0.90),
    "rest_background": (">=", 0.90),
    "area_ratio": ("in", (0.8, 1.25)),
    "other_acc_worst_drop": ("<=", 0.05),
    "psnr_mean": (">=", 25.0),
    "psnr_worst": (">=", 22.0),
}


def meets_goal(metric: str, value: float) -> bool:
    """Whether one value of ``metric`` meets its goal in :data:`GOALS`."""
    op, bound = GOALS[metric]
    return value <= bound if op == "<=" else value >= bound if op == ">=" else bound[0] <= value <= bound[1]


def check_goals(summary_row: dict) -> dict:
    """``{metric: True/False}`` for each goal whose metric the row has (judged on its worst run)."""
    out = {}
    for metric in GOALS:
        if metric not in summary_row or (metric == "substitute_share" and "anchor_follow" in summary_row):
            continue  # an anchored eraser is told what to draw: it should draw that, not avoid one substitute
        out[metric] = meets_goal(metric, summary_row[metric]["worst"])
    return out


def _get(row, path):
    for key in path:
        if row is None:
            return None
        row = row.get(key)
    return row


def _metric(row, name):
    if name == "other_acc_worst_drop":  # accuracy lost by the worst class on either background, clean -> erased
        clean = row["other_accuracy"]["clean"]["per_class_background"]
        erased = row["other_accuracy"]["erased"]["per_class_background"]
        return max(clean[c] - erased[c] for c in clean) if clean else None
    return _get(row, SUMMARY_METRICS[name][0])


def summarize(runs: dict) -> dict:
    """Per row: the mean and the worst of each headline metric over targets x seeds."""
    out = {}
    rows = sorted({name for r in runs.values() for name in r["rows"]})
    for name in rows:
        values = {m: [_metric(r["rows"][name], m) for r in runs.values() if name in r["rows"]] for m in SUMMARY_METRICS}
        summary = {}
        for metric, vals in values.items():
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            way = SUMMARY_METRICS[metric][1]
            worst = max(vals) if way == "low" else min(vals) if way == "high" else max(vals, key=lambda v: abs(np.log(v or 1e-9)))
            summary[metric] = {"mean": float(np.mean(vals)), "worst": float(worst), "n": len(vals)}
            if metric in GOALS:  # how many runs meet the goal: the worst run alone hides a near miss
                summary[metric]["passing"] = sum(meets_goal(metric, v) for v in vals)
        out[name] = summary
    return out


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _db(x):
    return "n/a" if x is None else f"{x:.1f}"


def _brief(r) -> str:
    s, e = r["target_shown"]["clean"], r["target_shown"]["erased"]
    return (f"shown {_pct(s['all'])} -> {_pct(e['all'])}, substitute {r['substitution']['top']} "
            f"{_pct(r['substitution']['share'])}, rest {_pct(r['rest_of_prompt']['all'])}, other acc worst "
            f"{_pct(r['other_accuracy']['erased']['worst'])}, PSNR {_db(r['other_psnr']['mean'])}/"
            f"{_db(r['other_psnr']['worst'])}")


def _substitute_cell(sub: dict) -> str:
    cell = f"{sub['top'] or '-'} ({_pct(sub['share'])})"
    return cell + (f", follows anchor {_pct(sub['anchor_follow'])}" if sub.get("anchor_follow") is not None else "")


def table(runs: dict) -> str:
    """One line per (target, seed, row)."""
    lines = [
        "| target | seed | row | g | target shown clean -> erased: seen / unseen / two-shape | substitute (share) "
        "| rest survives: all (shape/dir/bg/colour) | area ratio | two-shape other kept | other acc. mean, worst "
        "class (clean -> erased) | worst class x bg | PSNR mean / worst (dB) | attacked |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs.values():
        for name, r in run["rows"].items():
            c, e = r["target_shown"]["clean"], r["target_shown"]["erased"]
            shown = " / ".join(f"{_pct(c[g])}->{_pct(e[g])}" for g in ("seen", "unseen", "two_shape"))
            rest = r["rest_of_prompt"]
            parts = "/".join(_pct(rest[k]) for k in ("shape", "direction", "background", "color") if k in rest)
            acc_c, acc_e = r["other_accuracy"]["clean"], r["other_accuracy"]["erased"]
            kept = r["two_shape_other_kept"]
            attacked = " / ".join(_pct(v) for v in r.get("target_shown_attacked_by_steps", {}).values())
            lines.append(
                f"| {run['target']} | {run['seed']} | {name} | {r['guidance']:g} | {shown} | "
                f"{_substitute_cell(r['substitution'])} | {_pct(rest['all'])} ({parts}) "
                f"| {rest['area_ratio']:.2f} | {_pct(kept['clean'])}->{_pct(kept['erased'])} | "
                f"{_pct(acc_c['mean'])}->{_pct(acc_e['mean'])}, {_pct(acc_c['worst'])}->{_pct(acc_e['worst'])} "
                f"({acc_e['worst_class']}) | {_pct(acc_e['worst_class_background'])} | "
                f"{_db(r['other_psnr']['mean'])} / {_db(r['other_psnr']['worst'])} ({r['other_psnr']['worst_class']}) "
                f"| {attacked or '-'} |")
    return "\n".join(lines)


def multi_table(runs: dict) -> str:
    """Several concepts at once: each concept's share of erased target renders still showing it, and the cost."""
    lines = ["| concepts | seed | row | each concept shown after erasing (seen / unseen / two-shape) | other acc. "
             "worst class (clean -> erased) | PSNR mean / worst (dB) | training s |", "|---|---|---|---|---|---|---|"]
    for run in runs.values():
        for name, r in run["rows"].items():
            if "components" not in r:
                continue
            shown = "; ".join(f"{c}: " + " / ".join(_pct(p["target_shown"]["erased"][g])
                                                     for g in ("seen", "unseen", "two_shape"))
                              for c, p in r["components"].items())
            acc = r["other_accuracy"]
            lines.append(f"| {run['target']} | {run['seed']} | {name} | {shown} | {_pct(acc['clean']['worst'])} -> "
                         f"{_pct(acc['erased']['worst'])} | {_db(r['other_psnr']['mean'])} / "
                         f"{_db(r['other_psnr']['worst'])} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def summary_table(summary: dict, label: str = "row") -> str:
    """Mean (worst) of each headline metric over targets x seeds, and pass/fail against :data:`GOALS`."""
    names = list(SUMMARY_METRICS)
    lines = [f"| {label} | " + " | ".join(names) + " | goals met |", "|---|" + "---|" * (len(names) + 1)]
    for row, metrics in summary.items():
        cells = []
        goals = check_goals(metrics)
        for name in names:
            m = metrics.get(name)
            fmt = _db if name.startswith("psnr") else (lambda v: f"{v:.2f}") if name == "area_ratio" else _pct
            mark = "" if name not in goals else " ✓" if goals[name] else " ✗"
            if name in goals and "passing" in m:  # summaries saved before the count existed lack it
                mark += f" {m['passing']}/{m['n']}"
            cells.append("-" if m is None else f"{fmt(m['mean'])} ({fmt(m['worst'])}){mark}")
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {sum(goals.values())}/{len(goals)} |")
    return ("mean (worst run) over targets x seeds; ✓/✗: the worst run meets the goal or not; k/n: runs that meet "
            "it\n\n" + "\n".join(lines))


def _slug(text: str) -> str:
    return text.replace(" ", "-")


# -------------------------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m receler.world.benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("output_dir", help="where erasers, runs/*.json, world_benchmark.json and .md go")
    p.add_argument("--quick", action="store_true", help="a reduced prompt set and fewer updates, for CI")
    p.add_argument("--targets", default="red",
                   help="comma-separated targets: colours (red, ...), shapes (triangle, ...), directions (left or "
                        "'moving left', ...), combinations ('red triangle'), or several concepts erased together "
                        f"joined by '+' (red+green+blue: rows {', '.join(MULTI_ROWS)})")
    p.add_argument("--target_kind", choices=("auto",) + KINDS, default="auto",
                   help="check that every target is of this kind (auto: read the kind from the words)")
    p.add_argument("--seeds", default="42", help="comma-separated training seeds (renders use each prompt's own seed)")
    p.add_argument("--rows", default=None,
                   help=f"comma-separated rows ({', '.join(ALL_ROWS)}); default: all for one target and seed, "
                        f"else full")
    p.add_argument("--model_path", default=str(world.WORLD_MODEL_DIR), help="the world model folder")
    p.add_argument("--steps", type=int, default=world.NUM_INFERENCE_STEPS, help="denoising steps of renders and training")
    p.add_argument("--num_frames", type=int, default=world.NUM_FRAMES, help="frames")
    p.add_argument("--height", type=int, default=world.HEIGHT, help="height")
    p.add_argument("--width", type=int, default=world.WIDTH, help="width")
    p.add_argument("--train_steps", type=int, default=None, help="updates per eraser (default: 300, --quick: 60)")
    p.add_argument("--eraser_rank", type=int, default=16, help="eraser rank")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="eraser learning rate")
    p.add_argument("--eta", type=float, default=3.0, help="negative guidance strength")
    p.add_argument("--batch_size", type=int, default=4, help="prompts per update")
    p.add_argument("--anchors", action="store_true",
                   help="train with anchors: each training caption with the target left unsaid ('a circle moving "
                        "left ...' for red) is the base of the unlearning target (see the trainer's --anchor_weight)")
    p.add_argument("--anchor_to", metavar="VALUE", default=None,
                   help="train with anchors that name this value in the target's place ('a blue circle moving left "
                        "...' for red with --anchor_to blue): the eraser is told what to draw instead, and is judged "
                        "on drawing it (implies --anchors; a value of the targets' kind that no target has)")
    p.add_argument("--train_flags", default="",
                   help="extra training flags for every eraser row, e.g. '--mask_mode average --start_guidance 3'")
    p.add_argument("--clean_cache", default=None,
                   help="folder where clean renders are kept and reused by later runs of the same model and prompts "
                        "(the sweep shares one across its settings)")
    p.add_argument("--negative_guidance", type=float, default=4.0,
                   help="guidance of the negative-prompt baseline and of official SAFREE (both guide away from the "
                        "concept word with classifier-free guidance)")
    p.add_argument("--attack_tokens", type=int, default=12, help="soft tokens of the attack (and of adversarial training)")
    p.add_argument("--attack_steps", default=None,
                   help="attack budgets in steps, comma-separated; one attack run, scored after each "
                        "(default: 100,300,1000; --quick: 2,20)")
    p.add_argument("--attack_lr", type=float, default=2e-2, help="attack learning rate")
    p.add_argument("--adversarial_flags", default="",
                   help="extra training flags of the adversarial row, e.g. '--adv_steps 4 --adv_weight 0.5'")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="run only the (target, seed) runs whose index i (targets, then seeds, in the order given) has "
                        "i %% N == K, e.g. one array job per run; under accelerate launch / torchrun every process takes "
                        "its share by itself. Each run is saved to OUT_DIR/runs/ as it finishes; the shard that finishes "
                        "last writes the tables (a rerun without --shard writes them too, training nothing again)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    try:
        kind = None if args.target_kind == "auto" else args.target_kind
        args.targets = [parse_targets(t, kind) for t in args.targets.split(",") if t.strip()]
    except ValueError as err:
        p.error(f"--targets: {err}")
    if not args.targets:
        p.error("--targets is empty; name at least one target, e.g. --targets red")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2")
    if not args.seeds:
        p.error("--seeds is empty; give at least one seed, e.g. --seeds 42")
    if args.anchor_to is not None:
        args.anchors = True
        for target in args.targets:
            try:
                check_anchor_to(target, args.anchor_to)
            except ValueError as err:
                p.error(str(err))
    single = len(args.targets) == 1 and len(args.seeds) == 1
    args.rows = [r for r in (args.rows or (",".join(ALL_ROWS) if single else "full")).split(",") if r]
    unknown = [r for r in args.rows if r not in ALL_ROWS + MULTI_ROWS]
    if unknown:
        p.error(f"unknown --rows {', '.join(unknown)}; choose from {', '.join(ALL_ROWS + MULTI_ROWS)}")
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
    report = run(args)
    return {} if report is None else report  # {}: this shard's runs are saved, the tables are another's to write


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
