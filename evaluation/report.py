"""One static HTML report of a run: metric tables, clean-vs-erased frame strips, loss curves, arguments.

Example:
    python evaluation/report.py --output_dir outputs/report --metrics outputs/eval/nudity.json \
        outputs/eval/preservation.json --video_dir outputs/videos --train_log outputs/eraser/train_log.jsonl \
        --args_json outputs/eraser/args.json

Writes ``OUT/report.html`` and its pictures in ``OUT/report_files/``. The page needs no server, no
network and no JavaScript; open it in a browser or copy the folder anywhere.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import sys
import math
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

# scripts/demo.sh runs this file by path; from a checkout that is not installed, make the repository importable.
try:
    import receler  # noqa: F401
    import evaluation  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.common import resolve_prompts
from receler.errors import UserError, cli_entry, setup_logging
from receler.io_utils import atomic_write_text, make_folder
from receler.media import VideoReadError, find_video_pairs, frame_grid, read_video, save_png
from receler.plots import plot_train_log, read_train_log

logger = logging.getLogger(__name__)

#: Keys of a ``train_log.jsonl`` line that are plotted, in panel order.
#: Metric files looked for in ``--output_dir`` / ``--metrics_dir`` when no ``--metrics`` is given.
DEFAULT_METRIC_FILES = ("nudity.json", "preservation.json")
SIDE_ORDER = ("clean", "erased")
LONG_WORD = 24  # a cell with a word longer than this (a stem, a file name, a path) may wrap inside the word

# Tables never push the page wider than the window: long names (video stems, file names, paths, column names)
# may break after their "_" and "/", JSON and per-frame lists wrap (class "wrap"), and a table that still
# cannot fit scrolls inside its own box.
_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin-top: 1.2em; }
.table { max-width: 100%; overflow-x: auto; margin: 0.5em 0 1em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; max-width: 32em; }
th { background: #f0f0f0; } td.num { text-align: right; font-family: monospace; white-space: nowrap; }
td.wrap { overflow-wrap: break-word; } td code { font-size: 0.85em; }
figure { margin: 0.5em 0 1.5em 0; } figcaption { font-size: 0.9em; color: #444; margin-bottom: 0.3em; }
img { max-width: 100%; height: auto; image-rendering: pixelated; }
.note { color: #666; font-style: italic; }
"""


# --------------------------------------------------------------------------------------------------
# inputs


def read_json(path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"'{path}' does not exist. Pass an existing JSON file (e.g. nudity.json from eval_nudity.py).") from None
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"Cannot read JSON from '{path}' ({err}). Pass the file the evaluation wrote, unmodified.") from None


# --------------------------------------------------------------------------------------------------
# html pieces


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _cell(value) -> str:
    if value is None:
        return '<td class="num">n/a</td>'
    if isinstance(value, bool):
        return f"<td>{_e(value)}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    if isinstance(value, float):
        return f'<td class="num">{_e(_format_float(value))}</td>'
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f'<td class="wrap"><code>{_e(", ".join(_format_number(v) for v in value))}</code></td>'  # per frame
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        if len(text) > 300:
            text = text[:297] + "..."
        return f'<td class="wrap"><code>{_e(text)}</code></td>'
    text = str(value)
    if any(len(w) > LONG_WORD for w in text.split()):
        return f'<td class="wrap">{_breakable(text)}</td>'
    return f"<td>{_e(text)}</td>"


def _breakable(text: str) -> str:
    """Escaped ``text`` that may break after each ``_`` and ``/`` (a line break opportunity, nothing visible)."""
    return _e(text).replace("_", "_<wbr>").replace("/", "/<wbr>")


def _format_number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _format_float(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.4g}"
    return f"{value:.4f}"


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def flatten_scalars(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    """``(dotted.key, value)`` for every scalar reachable through nested objects (lists are left out)."""
    out = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten_scalars(value, name + "."))
        elif _scalar(value):
            out.append((name, value))
    return out


def table_html(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_breakable(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f'<div class="table"><table>\n<tr>{head}</tr>\n{body}\n</table></div>'


def records_table_html(records: Sequence[dict], max_rows: int = 500) -> str:
    """A table of a list of objects: one column per key (keys of large per-frame lists, and keys that are empty
    in every row, are left out)."""
    columns: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in columns and not (isinstance(value, list) and len(value) > 16):
                columns.append(key)
    columns = [key for key in columns if any(record.get(key) not in (None, "", [], {}) for record in records)]
    rows = [[record.get(key) for key in columns] for record in records[:max_rows]]
    extra = f'<p class="note">{len(records) - max_rows} more rows in the JSON file.</p>' if len(records) > max_rows else ""
    return table_html(columns, rows) + extra


def metrics_section(name: str, data: dict) -> str:
    parts = [f"<h3>{_e(name)}</h3>"]
    if not isinstance(data, dict):
        return parts[0] + '<p class="note">not a JSON object</p>'
    summary = [(key, value) for key, value in flatten_scalars(data) if not key.startswith(("protocol.", "sides."))]
    if summary:
        parts.append(table_html(("metric", "value"), summary))
    if isinstance(data.get("sides"), dict) and data["sides"]:
        sides = data["sides"]
        columns = []
        for numbers in sides.values():
            for key in numbers:
                if key not in columns and _scalar(numbers[key]):
                    columns.append(key)
        parts.append("<p>Per side</p>")
        parts.append(table_html(["side", *columns], [[side, *(numbers.get(c) for c in columns)] for side, numbers in sides.items()]))
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            parts.append(f"<p>{_e(key)} ({len(value)})</p>")
            parts.append(records_table_html(value))
    if isinstance(data.get("protocol"), dict):
        parts.append("<p>Protocol</p>")
        parts.append(table_html(("setting", "value"), [(k, v) for k, v in data["protocol"].items()]))
    return "\n".join(parts)


def _side_order(sides: dict) -> list[str]:
    known = [s for s in SIDE_ORDER if s in sides]
    return known + sorted(s for s in sides if s not in SIDE_ORDER and s != "compare")


# --------------------------------------------------------------------------------------------------
# the report


def write_report(
    output_path,
    metrics: Sequence = (),
    video_dir=None,
    prompt_file=None,
    train_log=None,
    args_json: Sequence = (),
    title: str = "Concept erasure report",
    max_frames: int = 8,
    max_videos: int | None = None,
    thumb_height: int = 160,
) -> Path:
    """Write the HTML report to ``output_path`` and its pictures to ``<output stem>_files/`` beside it.

    ``metrics``: paths of metric JSON files (or ``(name, dict)`` pairs); ``video_dir``: rendered
    videos, shown as one clean/erased frame strip per prompt (prompts from ``prompt_file`` or the
    folder's ``prompts.json``); ``train_log``: a ``train_log.jsonl`` whose curves are plotted;
    ``args_json``: run-argument files shown as tables. Returns the HTML path.
    """
    output_path = Path(output_path)
    assets_name = f"{output_path.stem}_files"
    assets = output_path.parent / assets_name
    make_folder(assets)

    def img(filename: str, alt: str) -> str:
        return f'<img src="{_e(quote(f"{assets_name}/{filename}"))}" alt="{_e(alt)}">'

    body = [f"<h1>{_e(title)}</h1>"]

    # metrics
    body.append("<h2>Metrics</h2>")
    loaded = []
    for item in metrics:
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict):
            loaded.append((str(item[0]), item[1]))
        else:
            loaded.append((Path(item).name, read_json(item)))
    if loaded:
        body.extend(metrics_section(name, data) for name, data in loaded)
    else:
        body.append('<p class="note">No metrics file given.</p>')

    # frame strips
    body.append("<h2>Clean vs erased frames</h2>")
    if video_dir is None:
        body.append('<p class="note">No video folder given.</p>')
    else:
        groups = find_video_pairs(video_dir)
        if max_videos is not None:
            groups = groups[:max_videos]
        prompts = resolve_prompts([stem for stem, _ in groups], video_dir, prompt_file)
        if not groups:
            body.append(f'<p class="note">No videos in {_e(video_dir)}.</p>')
        for number, (stem, sides) in enumerate(groups):
            rows, problems = [], []
            for side in _side_order(sides):
                try:
                    rows.append((side, read_video(sides[side])))
                except VideoReadError as err:
                    problems.append(f"{sides[side].name}: {err}")
            caption = f"<b>{_e(stem)}</b>"
            if stem in prompts:
                caption += f"<br>{_e(prompts[stem])}"
            body.append(f"<figure><figcaption>{caption}</figcaption>")
            if rows:
                filename = f"frames_{number:04d}.png"
                save_png(frame_grid(rows, max_frames=max_frames, thumb_height=thumb_height), assets / filename)
                body.append(img(filename, f"frames of {stem}"))
            for problem in problems:
                body.append(f'<p class="note">unreadable: {_e(problem)}</p>')
            body.append("</figure>")

    # training curves
    body.append("<h2>Training</h2>")
    if train_log is None:
        body.append('<p class="note">No training log given.</p>')
    else:
        records = read_train_log(train_log)
        plot = plot_train_log(records, assets / "train_curves.png") if records else None
        if plot is None:
            body.append(f'<p class="note">{_e(train_log)} holds no plottable records.</p>')
        else:
            body.append(f"<p>{len(records)} updates from {_e(train_log)}</p>")
            body.append(img(plot.name, "training curves"))
            last = records[-1]
            body.append(table_html(("last update", "value"), [(k, last[k]) for k in last if _scalar(last[k])]))

    # arguments
    body.append("<h2>Run arguments</h2>")
    if not args_json:
        body.append('<p class="note">No arguments file given.</p>')
    for path in args_json:
        data = read_json(path)
        body.append(f"<h3>{_e(path)}</h3>")
        if isinstance(data, dict):
            body.append(table_html(("argument", "value"), list(data.items())))
        else:
            body.append(f"<pre>{_e(json.dumps(data, indent=2))}</pre>")

    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    atomic_write_text(output_path, page)
    logger.info("Wrote %s", output_path)
    return output_path


# --------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="report.py",
        description=(
            "Write one static HTML report (OUT/report.html, pictures in OUT/report_files/): metric tables, clean vs "
            "erased frame strips per prompt, training curves and the run's arguments. No server or network needed."
        ),
    )
    parser.add_argument("--output_dir", required=True, help="Folder for report.html and report_files/ (created if missing).")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="JSON",
        help=(
            "Metric JSON files to tabulate (nudity.json, preservation.json, any other JSON object). Default: "
            f"{' and '.join(DEFAULT_METRIC_FILES)} found in --output_dir, if any."
        ),
    )
    parser.add_argument("--video_dir", default=None, help="Folder of rendered videos (<stem>_clean.mp4 / <stem>_erased.mp4) to show as frame strips.")
    parser.add_argument(
        "--prompt_file",
        default=None,
        help="Prompt file the videos were rendered from, for the captions (default: prompts.json in --video_dir if present).",
    )
    parser.add_argument("--train_log", default=None, help="train_log.jsonl written by the trainer (one JSON object per update); plotted as curves.")
    parser.add_argument("--args_json", nargs="+", default=[], metavar="JSON", help="Argument files (e.g. the trainer's args.json) shown as tables.")
    parser.add_argument("--title", default="Concept erasure report", help="Page title (default: %(default)s).")
    parser.add_argument("--max_frames", type=int, default=8, help="Frames per strip, spread over the video (default: %(default)s).")
    parser.add_argument("--max_videos", type=int, default=None, help="Show at most this many prompts (default: all).")
    parser.add_argument("--thumb_height", type=int, default=160, help="Frames taller than this are shrunk in the strips (default: %(default)s).")
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    args = parser.parse_args(argv)
    if args.max_frames < 1:
        raise UserError(f"--max_frames {args.max_frames} must be 1 or more.")
    if args.thumb_height < 8:
        raise UserError(f"--thumb_height {args.thumb_height} must be 8 or more.")
    if args.max_videos is not None and args.max_videos < 1:
        raise UserError(f"--max_videos {args.max_videos} must be 1 or more (leave it out to show every prompt).")
    return args


@cli_entry
def main(argv=None) -> Path:
    args = parse_args(argv)
    setup_logging(args.verbose)
    output_dir = Path(args.output_dir)
    metrics = args.metrics
    if metrics is None:
        metrics = [output_dir / name for name in DEFAULT_METRIC_FILES if (output_dir / name).is_file()]
    path = write_report(
        output_dir / "report.html",
        metrics=metrics,
        video_dir=args.video_dir,
        prompt_file=args.prompt_file,
        train_log=args.train_log,
        args_json=args.args_json,
        title=args.title,
        max_frames=args.max_frames,
        max_videos=args.max_videos,
        thumb_height=args.thumb_height,
    )
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
