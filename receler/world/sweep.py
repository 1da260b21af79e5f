"""Sweep training settings on the world benchmark in the background, resuming where it stopped.

    python -m receler.world.sweep OUT_DIR --settings settings.json --targets red,green,blue --seeds 0 [--workers 2]

``settings.json`` maps a name to the benchmark flags of that setting, e.g.
``{"base": "", "eta5": "--eta 5", "avg_mask": "--train_flags '--mask_mode average'"}``. Each setting is one
world-benchmark run (the ``full`` row, every target x seed) in ``OUT_DIR/<name>/``; the benchmark keeps one file
per (target, seed), so a killed sweep reruns only what was missing. ``--workers 2`` runs two settings at once,
each in its own process with one thread (on a 2-core machine that is faster than one process with two).
Writes ``OUT_DIR/sweep.json`` (every setting's summary, goals and cost) and ``OUT_DIR/sweep.md`` (the table).
"""

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import UserError, cli_entry, setup_logging
from ..io_utils import atomic_write_json, atomic_write_text
from .benchmark import check_goals, summary_table

logger = logging.getLogger("receler.world.sweep")


def read_settings(path) -> dict:
    path = Path(path)
    try:
        settings = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--settings {path}: cannot read it as JSON ({err})") from None
    if not isinstance(settings, dict) or not settings or not all(isinstance(v, str) for v in settings.values()):
        raise UserError(f"--settings {path} must be a JSON object mapping names to benchmark flags, e.g. "
                        '{"base": "", "eta5": "--eta 5"}')
    for name in settings:
        if not name or "/" in name or name.startswith("."):
            raise UserError(f"--settings {path}: {name!r} cannot be a folder name; use letters, digits, _ and -")
    return settings


def run_setting(out_dir: Path, name: str, flags: str, common: list) -> dict:
    """One setting's benchmark, in a subprocess (one thread); returns its report."""
    folder = out_dir / name
    argv = [sys.executable, "-m", "receler.world.benchmark", str(folder), "--rows", "full", *common, *shlex.split(flags)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(folder / "benchmark.log", "a") as log:
        done = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise UserError(f"setting {name!r} failed (exit {done.returncode}); see {folder / 'benchmark.log'}")
    report = json.loads((folder / "world_benchmark.json").read_text())
    logger.info("setting %s done in %.0f s", name, time.perf_counter() - start)
    return report


def summarize_sweep(settings: dict, reports: dict) -> dict:
    out = {}
    for name, report in reports.items():
        summary = report["summary"].get("full", {})
        runs = report["runs"].values()
        out[name] = {
            "flags": settings[name],
            "summary": summary,
            "goals": check_goals(summary),
            "runs": len(runs),
            "train_seconds": sum(r["rows"]["full"].get("train_seconds") or 0 for r in runs),
            "seconds": sum(r.get("seconds") or 0 for r in runs),
        }
    return out


def sweep_table(result: dict) -> str:
    table = summary_table({name: r["summary"] for name, r in result.items()}, label="setting")
    cost = ["| setting | flags | runs | training s | total s |", "|---|---|---|---|---|"]
    cost += [f"| {name} | `{r['flags'] or '(base)'}` | {r['runs']} | {r['train_seconds']:.0f} | {r['seconds']:.0f} |"
             for name, r in result.items()]
    return table + "\n\n" + "\n".join(cost)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m receler.world.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("output_dir", help="one folder per setting, plus sweep.json and sweep.md")
    p.add_argument("--settings", required=True, help="JSON file: {name: benchmark flags}")
    p.add_argument("--targets", default="red", help="targets of every setting (as in the benchmark)")
    p.add_argument("--seeds", default="0", help="training seeds of every setting")
    p.add_argument("--workers", type=int, default=1, help="settings run at once, each a one-thread process")
    p.add_argument("--benchmark_flags", default="",
                   help="flags for every setting's benchmark (before the setting's own), e.g. '--quick'")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be at least 1 (got {args.workers})")
    return args


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    settings = read_settings(args.settings)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--targets", args.targets, "--seeds", args.seeds, "--clean_cache", str(out / "clean_cache"),
              *shlex.split(args.benchmark_flags)]
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {name: pool.submit(run_setting, out, name, flags, common) for name, flags in settings.items()}
        reports = {name: future.result() for name, future in futures.items()}
    result = summarize_sweep(settings, reports)
    atomic_write_json(out / "sweep.json", {"targets": args.targets, "seeds": args.seeds, "settings": result})
    text = sweep_table(result)
    atomic_write_text(out / "sweep.md", text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
