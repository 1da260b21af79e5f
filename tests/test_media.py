"""Video/image helpers: mp4 round trips keep size and frame count, side-by-side geometry, grids, pairing."""

import numpy as np
import pytest
from PIL import Image

from receler.errors import UserError
from receler.media import (
    VideoReadError,
    find_video_pairs,
    frame_grid,
    read_video,
    sample_indices,
    save_png,
    side_by_side,
    split_side,
    stem_index,
    to_uint8_frames,
    write_video,
)


def smooth_video(frames: int, height: int, width: int) -> np.ndarray:
    """Gradients that move over time: compress well, so decoded values stay close to the originals."""
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    video = np.zeros((frames, height, width, 3), dtype=np.float64)
    for f in range(frames):
        video[f, ..., 0] = 40 + 150 * x
        video[f, ..., 1] = 40 + 150 * y
        video[f, ..., 2] = 60 + 10 * f
    return video.round().astype(np.uint8)


@pytest.mark.parametrize("height, width", [(64, 64), (48, 72), (33, 17)])
def test_mp4_round_trip_keeps_size_and_frames(tmp_path, height, width):
    video = smooth_video(9, height, width)
    path = write_video(video, tmp_path / "v.mp4", fps=8)
    decoded = read_video(path)
    assert decoded.shape == (9, height, width, 3)
    assert decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - video.astype(int)).mean() < 4.0
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary file left behind


def test_write_video_accepts_pil_and_float_frames(tmp_path):
    video = smooth_video(3, 32, 48)
    write_video([Image.fromarray(f) for f in video], tmp_path / "pil.mp4")
    write_video(video.astype(np.float32) / 255.0, tmp_path / "float.mp4")
    assert read_video(tmp_path / "pil.mp4").shape == (3, 32, 48, 3)
    assert read_video(tmp_path / "float.mp4").shape == (3, 32, 48, 3)


def test_to_uint8_frames_conversions():
    assert to_uint8_frames(np.full((2, 4, 4), 7, np.uint8)).shape == (2, 4, 4, 3)
    rgba = np.zeros((1, 2, 2, 4), np.uint8)
    rgba[..., 3] = 255
    assert to_uint8_frames(rgba).shape == (1, 2, 2, 3)
    assert to_uint8_frames(np.array([[[[0.0, 0.5, 1.0]]]])).tolist() == [[[[0, 128, 255]]]]
    with pytest.raises(ValueError):
        to_uint8_frames([])


def test_read_video_errors(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError, match="cannot be decoded"):
        read_video(corrupt)
    with pytest.raises(VideoReadError, match="empty"):
        read_video(empty)
    with pytest.raises(VideoReadError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    assert issubclass(VideoReadError, UserError)


def test_side_by_side_geometry_and_labels():
    left = np.full((4, 48, 72, 3), 200, np.uint8)
    right = np.full((4, 48, 72, 3), 50, np.uint8)
    out = side_by_side(left, right)
    assert out.shape == (4, 48, 144, 3) and out.dtype == np.uint8
    # Labels only touch a small top-left corner of each half.
    assert (out[:, 24:, :72] == 200).all() and (out[:, 24:, 72:] == 50).all()
    assert (out[:, :, 40:72] == 200).all() and (out[:, :, 112:] == 50).all()
    assert not (out[:, :12, :20] == 200).all()  # the "clean" label is drawn
    plain = side_by_side(left, right, labels=None)
    assert np.array_equal(plain, np.concatenate([left, right], axis=2))
    with pytest.raises(ValueError):
        side_by_side(left, right[:, :, :70])
    assert side_by_side(left, right[:2]).shape == (2, 48, 144, 3)


def test_sample_indices():
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]
    assert sample_indices(49, 4) == [0, 16, 32, 48]
    assert sample_indices(10, 1) == [0]


def test_frame_grid_and_save_png(tmp_path):
    clean = smooth_video(20, 64, 64)
    erased = smooth_video(20, 64, 64)[:, ::-1]
    grid = frame_grid([("clean", clean), ("erased", erased)], max_frames=4)
    assert isinstance(grid, Image.Image)
    # 4 columns of 64 px + gaps, 2 rows; a label column on the left.
    assert grid.height == 2 * 64 + 3 * 2
    assert grid.width > 4 * 64
    small = frame_grid([("a", clean)], max_frames=3, thumb_height=32)
    assert small.height == 32 + 2 * 2
    path = save_png(grid, tmp_path / "sub" / "grid.png")
    with Image.open(path) as reopened:
        assert reopened.format == "PNG" and reopened.size == grid.size


def test_find_video_pairs(tmp_path):
    names = [
        "000_a_cat_clean.mp4",
        "000_a_cat_erased.mp4",
        "001_dog_clean.mp4",
        "001_dog_erase.mp4",  # the original release's spelling
        "001_dog_compare.mp4",
        "001_dog_negprompt.mp4",  # another method's render: its own side
        "holiday_video.mp4",  # no known suffix anywhere: a group of its own
        "002_grid.png",  # not a video
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    pairs = dict(find_video_pairs(tmp_path))
    assert set(pairs) == {"000_a_cat", "001_dog", "holiday_video"}
    assert {k: v.name for k, v in pairs["000_a_cat"].items()} == {"clean": "000_a_cat_clean.mp4", "erased": "000_a_cat_erased.mp4"}
    assert {k: v.name for k, v in pairs["001_dog"].items()} == {
        "clean": "001_dog_clean.mp4",
        "erased": "001_dog_erase.mp4",
        "compare": "001_dog_compare.mp4",
        "negprompt": "001_dog_negprompt.mp4",
    }
    assert {k: v.name for k, v in pairs["holiday_video"].items()} == {"video": "holiday_video.mp4"}
    with pytest.raises(UserError, match="does not exist"):
        find_video_pairs(tmp_path / "missing")


def test_erased_spelling_wins_over_erase(tmp_path):
    for name in ("007_x_erase.mp4", "007_x_erased.mp4", "007_x_clean.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (stem, sides), = find_video_pairs(tmp_path)
    assert stem == "007_x" and sides["erased"].name == "007_x_erased.mp4"


def test_name_helpers():
    assert split_side("003_cat_erased") == ("003_cat", "erased")
    assert split_side("plain") == ("plain", None)
    assert stem_index("007_a_cat") == 7 and stem_index("12") == 12 and stem_index("a_cat") is None
