"""Nudity evaluation: aggregation math on hand-made detections, NudeNet offline, the CLI end to end."""

import csv
import json
import sys

import numpy as np
import pytest

from evaluation import eval_nudity
from evaluation.nudity import (
    NUDENET_SCORE_FLOOR,
    PAPER_CLASSES,
    detect_frames,
    frame_is_nude,
    load_detector,
    normalize_classes,
    summarize_by_side,
    summarize_set,
    summarize_video,
)
from receler.errors import UserError
from receler.media import write_video


def det(cls, score):
    return {"class": cls, "score": score, "box": [0, 0, 1, 1]}


# --------------------------------------------------------------------------------------------------
# aggregation math


def test_frame_rule():
    assert frame_is_nude([det("BELLY_EXPOSED", 0.3)])
    assert not frame_is_nude([det("BELLY_COVERED", 0.9), det("FACE_FEMALE", 0.99)])  # not among the 8 classes
    assert not frame_is_nude([det("FEET_EXPOSED", 0.59)], threshold=0.6)
    assert frame_is_nude([det("FEET_EXPOSED", 0.6)], threshold=0.6)  # >= threshold counts
    assert not frame_is_nude([])
    assert frame_is_nude([det("FACE_FEMALE", 0.9)], classes=("FACE_FEMALE",))


def test_video_summary_by_hand():
    frames = [
        [],
        [det("BELLY_EXPOSED", 0.4), det("FACE_FEMALE", 0.95)],
        [det("BUTTOCKS_EXPOSED", 0.5)],
        [det("FEMALE_BREAST_COVERED", 0.8)],
        [det("BELLY_EXPOSED", 0.7), det("FEET_EXPOSED", 0.3)],
    ]
    summary = summarize_video(frames, PAPER_CLASSES, threshold=0.25)
    # Flagged frames: 1, 2, 4 -> 3 of 5.
    assert summary["frames_evaluated"] == 5
    assert summary["flagged_frames"] == 3
    assert summary["nudity_rate"] == pytest.approx(3 / 5)
    assert summary["flagged"] is True
    assert summary["flagged_frame_indices"] == [1, 2, 4]
    assert summary["class_frames"] == {"BELLY_EXPOSED": 2, "BUTTOCKS_EXPOSED": 1, "FEET_EXPOSED": 1}
    assert summary["max_score"] == pytest.approx(0.7)

    strict = summarize_video(frames, PAPER_CLASSES, threshold=0.6)
    # Only frame 4 (BELLY_EXPOSED 0.7) passes 0.6.
    assert (strict["flagged_frames"], strict["nudity_rate"]) == (1, pytest.approx(1 / 5))

    strided = summarize_video(frames[::2], PAPER_CLASSES, 0.25, frame_indices=[0, 2, 4])
    assert strided["flagged_frame_indices"] == [2, 4]
    assert strided["nudity_rate"] == pytest.approx(2 / 3)


def test_set_and_side_aggregation_by_hand():
    videos = [
        {"side": "clean", **summarize_video([[det("BELLY_EXPOSED", 0.9)]] * 3 + [[]] * 1)},  # 3/4 flagged
        {"side": "clean", **summarize_video([[]] * 6)},  # 0/6
        {"side": "erased", **summarize_video([[]] * 3 + [[det("FEET_EXPOSED", 0.5)]])},  # 1/4
        {"side": "erased", **summarize_video([[]] * 6)},  # 0/6
    ]
    overall = summarize_set(videos)
    assert overall["num_videos"] == 4
    assert overall["num_frames"] == 20
    assert overall["num_flagged_frames"] == 4
    assert overall["frame_nudity_rate"] == pytest.approx(4 / 20)  # pooled over frames
    assert overall["video_nudity_rate"] == pytest.approx(2 / 4)
    assert overall["mean_video_nudity_rate"] == pytest.approx((0.75 + 0 + 0.25 + 0) / 4)

    sides = summarize_by_side(videos)
    assert list(sides) == ["clean", "erased"]
    assert sides["clean"]["frame_nudity_rate"] == pytest.approx(3 / 10)
    assert sides["clean"]["video_nudity_rate"] == pytest.approx(1 / 2)
    assert sides["erased"]["frame_nudity_rate"] == pytest.approx(1 / 10)
    assert sides["erased"]["num_flagged_videos"] == 1

    empty = summarize_set([])
    assert empty["frame_nudity_rate"] is None and empty["video_nudity_rate"] is None and empty["num_frames"] == 0


def test_normalize_classes():
    assert normalize_classes(None) == PAPER_CLASSES
    assert normalize_classes(["feet", "BELLY_EXPOSED", "face-female"]) == ("FEET_EXPOSED", "BELLY_EXPOSED", "FACE_FEMALE")
    with pytest.raises(UserError, match="Unknown NudeNet class"):
        normalize_classes(["ELBOW"])


def test_missing_nudenet_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # makes `import nudenet` raise ImportError
    with pytest.raises(UserError, match=r"pip install -e \.\[eval\]"):
        load_detector()


# --------------------------------------------------------------------------------------------------
# NudeNet itself, offline


def synthetic_frames() -> np.ndarray:
    frames = []
    for colour in [(0, 0, 0), (255, 255, 255), (200, 150, 120), (30, 90, 200)]:
        frames.append(np.full((96, 96, 3), colour, np.uint8))
    y, x = np.mgrid[0:96, 0:128]
    frames.append(np.stack([x * 2 % 256, y * 2 % 256, (x + y) % 256], -1).astype(np.uint8)[:96, :96])
    shapes = np.full((96, 96, 3), 240, np.uint8)
    shapes[20:60, 10:50] = (220, 40, 40)
    shapes[(y[:96, :96] - 60) ** 2 + (x[:96, :96] - 70) ** 2 < 300] = (40, 160, 60)
    frames.append(shapes)
    return np.stack(frames)


def test_nudenet_offline_on_synthetic_frames():
    pytest.importorskip("nudenet")
    detector = load_detector()
    detections = detect_frames(detector, synthetic_frames(), batch_size=4)
    assert len(detections) == 6
    exposed = [d for frame in detections for d in frame if d["class"].endswith("_EXPOSED")]
    assert exposed == []
    assert all(d["score"] >= NUDENET_SCORE_FLOOR for frame in detections for d in frame)


# --------------------------------------------------------------------------------------------------
# the CLI end to end


@pytest.fixture
def video_folder(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    clean = np.zeros((9, 64, 64, 3), np.uint8)
    clean[:, 16:48, 16:48] = (180, 140, 110)
    clean[[1, 4, 7], :8, :8] = (255, 0, 0)  # a red corner marks the frames the fake detector flags
    erased = np.zeros((9, 64, 64, 3), np.uint8)
    erased[:, 16:48, 16:48] = (90, 140, 110)
    write_video(clean, folder / "000_scene_clean.mp4")
    write_video(erased, folder / "000_scene_erased.mp4")
    (folder / "001_broken_clean.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    (folder / "001_broken_erased.mp4").write_bytes(b"")
    return folder


class RedCornerDetector:
    """Stands in for NudeNet: flags a frame when its top-left corner is red. Frames arrive in BGR."""

    def detect_batch(self, images, batch_size=4):
        out = []
        for image in images:
            b, g, r = image[:8, :8].reshape(-1, 3).mean(0)
            out.append([det("BELLY_EXPOSED", 0.8)] if r > 200 and g < 60 and b < 60 else [det("FACE_FEMALE", 0.9)])
        return out


def test_cli_counts_with_a_fake_detector(video_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_nudity, "load_detector", lambda: RedCornerDetector())
    out = tmp_path / "out"
    result = eval_nudity.main(["--video_dir", str(video_folder), "--output_dir", str(out)])
    assert result["sides"]["clean"]["frame_nudity_rate"] == pytest.approx(3 / 9)
    assert result["sides"]["erased"]["frame_nudity_rate"] == 0.0
    assert result["nudity_rate"] == pytest.approx(3 / 18)
    assert result["video_nudity_rate"] == pytest.approx(1 / 2)
    clean = next(v for v in result["videos"] if v["side"] == "clean")
    assert clean["flagged_frame_indices"] == [1, 4, 7]

    video_level = eval_nudity.main(["--video_dir", str(video_folder), "--output_dir", str(out), "--video_level"])
    assert video_level["nudity_rate"] == pytest.approx(1 / 2)
    assert video_level["protocol"]["level"] == "video"

    strided = eval_nudity.main(["--video_dir", str(video_folder), "--output_dir", str(out), "--frame_stride", "3"])
    clean = next(v for v in strided["videos"] if v["side"] == "clean")
    # Frames 0, 3, 6 are read: none has the red corner.
    assert clean["frames_evaluated"] == 3 and clean["flagged_frames"] == 0


def test_cli_end_to_end_with_nudenet(video_folder, tmp_path):
    pytest.importorskip("nudenet")
    out = tmp_path / "out"
    eval_nudity.main(["--video_dir", str(video_folder), "--output_dir", str(out), "--batch_size", "4"])
    data = json.loads((out / "nudity.json").read_text())
    for key in ("nudity_rate", "frame_nudity_rate", "video_nudity_rate", "videos", "skipped", "sides", "protocol"):
        assert key in data
    assert data["nudity_rate"] == 0.0
    assert set(data["sides"]) == {"clean", "erased"}
    assert data["sides"]["clean"]["num_frames"] == 9 and data["sides"]["erased"]["nudity_rate"] == 0.0
    assert [(v["file"], v["frames_evaluated"]) for v in data["videos"]] == [("000_scene_clean.mp4", 9), ("000_scene_erased.mp4", 9)]
    assert sorted(s["file"] for s in data["skipped"]) == ["001_broken_clean.mp4", "001_broken_erased.mp4"]
    assert all(s["reason"] for s in data["skipped"])
    protocol = data["protocol"]
    assert protocol["classes"] == list(PAPER_CLASSES)
    assert protocol["threshold"] == protocol["effective_threshold"] == NUDENET_SCORE_FLOOR
    assert protocol["frame_stride"] == 1 and protocol["level"] == "frame"
    assert "0.25" in protocol["threshold_note"]

    with open(out / "nudity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "skipped", "skipped"]


def test_cli_user_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        eval_nudity.main(["--video_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--threshold", "1.5"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        eval_nudity.main(["--video_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")])  # no videos
    assert "No .mp4 videos" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_nudity.main(["--video_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--classes", "ELBOW"])
    assert "Unknown NudeNet class" in capsys.readouterr().err


def test_help_mentions_the_floor(capsys):
    with pytest.raises(SystemExit):
        eval_nudity.parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--video_dir", "--output_dir", "--threshold", "--frame_stride", "--classes", "--video_level", "--batch_size"):
        assert flag in text
    assert "0.25" in text
