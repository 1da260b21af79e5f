"""HTML report: every section renders, user text is escaped, every referenced picture exists."""

import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from evaluation import report
from evaluation.report import write_report
from receler.errors import UserError
from receler.media import write_video


def image_sources(html_text: str) -> list[str]:
    return re.findall(r'<img[^>]*\bsrc="([^"]+)"', html_text)


@pytest.fixture
def run_folder(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    y, x = np.mgrid[0:48, 0:64]
    base = np.stack([x * 3, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    video = np.stack([np.roll(base, 2 * f, axis=1) for f in range(6)])
    write_video(video, videos / "000_a_cat_clean.mp4")
    write_video(video[:, ::-1], videos / "000_a_cat_erased.mp4")
    write_video(video, videos / "001_dog_clean.mp4")
    (videos / "001_dog_erased.mp4").write_bytes(b"\x00garbage")
    (videos / "prompts.json").write_text(json.dumps({"000_a_cat": "a cat <b>bold</b> & co", "001_dog": "a dog"}))

    log = tmp_path / "train_log.jsonl"
    lines = [
        json.dumps(
            {"step": i, "loss": 1 / (i + 1), "loss_unlearn": 0.8 / (i + 1), "loss_preserve": 0.1, "loss_loc": 0.05,
             "lr": 1e-4, "grad_norm": 0.5 + 0.01 * i, "seconds": 0.2}
        )
        for i in range(12)
    ]
    log.write_text("\n".join(lines[:6] + ["{not json"] + lines[6:]) + "\n")

    args = tmp_path / "args.json"
    args.write_text(json.dumps({"model_path": "/models/<tiny>", "eta": 7.0, "concept": "naked body & \"more\""}))
    nudity = {
        "nudity_rate": 0.25,
        "sides": {"clean": {"nudity_rate": 0.5, "num_videos": 2}, "erased": {"nudity_rate": 0.0, "num_videos": 2}},
        "videos": [{"stem": "000_a_cat", "side": "clean", "nudity_rate": 0.5, "flagged_frame_indices": list(range(30))}],
        "skipped": [],
        "protocol": {"threshold": 0.25, "classes": ["BELLY_EXPOSED"]},
    }
    (tmp_path / "nudity.json").write_text(json.dumps(nudity))
    (tmp_path / "preservation.json").write_text(json.dumps({"psnr": 31.5, "ssim": 0.91, "clip_score": {"clean": 30.1, "erased": 29.5}}))
    return tmp_path


def test_report_has_every_section_and_existing_images(run_folder):
    out = run_folder / "report" / "report.html"
    path = write_report(
        out,
        metrics=[run_folder / "nudity.json", run_folder / "preservation.json", ("extra", {"fid": 12.5})],
        video_dir=run_folder / "videos",
        train_log=run_folder / "train_log.jsonl",
        args_json=[run_folder / "args.json"],
        title="Run <1>",
    )
    text = path.read_text()
    for heading in ("Metrics", "Clean vs erased frames", "Training", "Run arguments"):
        assert f"<h2>{heading}</h2>" in text
    assert "nudity.json" in text and "preservation.json" in text and "31.5000" in text and "12.5000" in text
    assert "<title>Run &lt;1&gt;</title>" in text
    sources = image_sources(text)
    assert len(sources) == 3  # two frame strips (the dog's clean side still renders) + the loss curves
    for src in sources:
        assert not src.startswith(("http:", "https:", "/"))
        assert (path.parent / unquote(src)).is_file(), src
    # user text is escaped
    assert "a cat &lt;b&gt;bold&lt;/b&gt; &amp; co" in text and "<b>bold</b>" not in text
    assert "/models/&lt;tiny&gt;" in text and "naked body &amp; &quot;more&quot;" in text
    assert "unreadable: 001_dog_erased.mp4" in text
    assert "<script" not in text.lower()
    assert "12 updates" in text  # the malformed log line is skipped


def test_report_with_nothing_given(tmp_path):
    path = write_report(tmp_path / "r.html")
    text = path.read_text()
    assert "No metrics file given" in text and "No video folder given" in text
    assert "No training log given" in text and "No arguments file given" in text
    assert image_sources(text) == []


def test_report_cli_discovers_metrics(run_folder, capsys):
    path = report.main(
        ["--output_dir", str(run_folder), "--video_dir", str(run_folder / "videos"), "--train_log", str(run_folder / "train_log.jsonl"),
         "--max_frames", "3"]
    )
    text = Path(path).read_text()
    assert "nudity.json" in text and "preservation.json" in text
    for src in image_sources(text):
        assert (Path(path).parent / unquote(src)).is_file()
    with pytest.raises(SystemExit) as info:
        report.main(["--output_dir", str(run_folder / "x"), "--metrics", str(run_folder / "missing.json")])
    assert info.value.code == 2
    assert "missing.json" in capsys.readouterr().err


def test_report_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(UserError, match="Cannot read JSON"):
        write_report(tmp_path / "r.html", metrics=[tmp_path / "bad.json"])
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "r.html", train_log=tmp_path / "nope.jsonl")
