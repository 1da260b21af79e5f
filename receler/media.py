"""Video and image helpers shared by inference and evaluation.

Frames travel as ``uint8`` RGB arrays of shape ``[F, H, W, 3]`` (a list of PIL images, a list of
``[H, W, 3]`` arrays, or float arrays in ``[0, 1]`` as diffusers returns them are accepted too).

Videos are H.264 mp4 files written through imageio-ffmpeg without its macro-block resize, so a video
keeps the exact size of its frames (64x64, 48x72, ...). Even sizes use ``yuv420p`` (plays everywhere);
an odd width or height is written as ``yuv444p`` because 4:2:0 chroma cannot hold it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from receler.errors import UserError
from receler.io_utils import atomic_write

logger = logging.getLogger(__name__)

#: Video files :func:`find_video_pairs` looks at.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4",)

#: File-name suffixes with a fixed meaning; ``_erase`` is the original release's spelling of ``_erased``.
SIDE_ALIASES: dict[str, str] = {"clean": "clean", "erased": "erased", "erase": "erased", "compare": "compare"}

#: Side name given to a video whose file name has no side suffix.
PLAIN_SIDE = "video"

_CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}


class VideoReadError(UserError):
    """A video file that cannot be decoded (missing, empty, corrupt, or without frames)."""


def _usual_permissions(tmp: str) -> None:
    """Temporary files are created owner-only (0600); give the final file the usual umask mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


# --------------------------------------------------------------------------------------------------
# frames


def to_uint8_frames(frames) -> np.ndarray:
    """Normalise frames to a ``uint8`` array ``[F, H, W, 3]``.

    Accepts a list/tuple of PIL images or arrays, or one array ``[F, H, W, C]`` / ``[F, H, W]``.
    Float arrays are read as values in ``[0, 1]``; RGBA drops its alpha; grayscale is repeated.
    """
    if isinstance(frames, np.ndarray):
        array = frames
    else:
        frames = list(frames)
        if not frames:
            raise ValueError("no frames given")
        array = np.stack([_frame_to_array(frame) for frame in frames])
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"frames must have shape [F, H, W, C], got {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError("no frames given")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            array = np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0
            array = np.round(array)
        array = np.clip(array, 0, 255).astype(np.uint8)
    channels = array.shape[-1]
    if channels == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 4:
        array = array[..., :3]
    elif channels != 3:
        raise ValueError(f"frames must have 1, 3 or 4 channels, got {channels}")
    return np.ascontiguousarray(array)


def _frame_to_array(frame) -> np.ndarray:
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.ndim == 2:
        array = array[..., None]
    return array


# --------------------------------------------------------------------------------------------------
# video files


def write_video(frames, path, fps: float = 8, quality: float = 8) -> Path:
    """Write frames to an H.264 mp4 at ``path`` atomically, keeping their exact size.

    ``quality`` is imageio-ffmpeg's 0-10 scale (8 is CRF 10, close to visually lossless).
    Returns the path written.
    """
    import imageio_ffmpeg

    path = Path(path)
    array = to_uint8_frames(frames)
    _, height, width, _ = array.shape
    container = _CONTAINER_FORMATS.get(path.suffix.lower())
    if container is None:
        raise ValueError(f"write_video writes {', '.join(_CONTAINER_FORMATS)} files, not '{path.suffix}' ({path})")
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"

    def write(tmp: str) -> None:
        writer = imageio_ffmpeg.write_frames(
            tmp,
            size=(width, height),
            fps=fps,
            quality=quality,
            codec="libx264",
            pix_fmt_out=pix_fmt,
            macro_block_size=1,
            output_params=["-f", container],
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in array:
                writer.send(frame)
        finally:
            writer.close()
        _usual_permissions(tmp)

    atomic_write(path, write)
    logger.debug("Wrote %s (%d frames, %dx%d, %s fps)", path, len(array), width, height, fps)
    return path


def read_video(path) -> np.ndarray:
    """Decode a video into a ``uint8`` array ``[F, H, W, 3]``.

    Raises :class:`VideoReadError` (a :class:`~receler.errors.UserError`) for a missing, empty or
    undecodable file, or one without frames.
    """
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"Video '{path}' does not exist or is not a file. Check the path.")
    if path.stat().st_size == 0:
        raise VideoReadError(f"Video '{path}' is empty (0 bytes); it was probably interrupted while written. Render it again.")
    frames = []
    reader = None
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        width, height = (int(v) for v in meta["size"])
        frame_bytes = width * height * 3
        for chunk in reader:
            if len(chunk) != frame_bytes:
                break
            frames.append(np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3))
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as err:
        reason = str(err).strip().splitlines()
        reason = reason[-1] if reason else type(err).__name__
        raise VideoReadError(f"Video '{path}' cannot be decoded ({reason}). The file is corrupt or not a video; render it again.") from None
    finally:
        if reader is not None:
            reader.close()
    if not frames:
        raise VideoReadError(f"Video '{path}' holds no frames. Render it again.")
    return np.stack(frames)


# --------------------------------------------------------------------------------------------------
# pictures


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=max(6, int(size)))
    except TypeError:  # Pillow < 10.1: bitmap font of one size
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _draw_label(image: Image.Image, text: str, font) -> None:
    """A small dark box with white text in the top-left corner, clipped to the image."""
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    box = (0, 0, min(image.width, right - left + 2 * pad), min(image.height, bottom - top + 2 * pad))
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)


def side_by_side(left_frames, right_frames, labels: Sequence[str | None] | None = ("clean", "erased")) -> np.ndarray:
    """Put two videos next to each other: ``uint8`` array ``[F, H, 2W, 3]``.

    Both inputs must have the same frame size; with different frame counts the longer one is cut.
    Each label (``None`` or ``""`` for none) is drawn inside its half, at the top-left corner, so the
    output is exactly twice as wide as one input and as high.
    """
    left = to_uint8_frames(left_frames)
    right = to_uint8_frames(right_frames)
    if left.shape[1:] != right.shape[1:]:
        raise ValueError(f"side_by_side needs frames of one size, got {left.shape[1:3]} and {right.shape[1:3]}")
    count = min(len(left), len(right))
    if len(left) != len(right):
        logger.warning("side_by_side: %d and %d frames; keeping the first %d", len(left), len(right), count)
    height, width = left.shape[1:3]
    labels = tuple(labels) if labels else (None, None)
    font = _font(max(8, height // 24))
    out = np.empty((count, height, 2 * width, 3), dtype=np.uint8)
    for i in range(count):
        for half, (frames, label) in enumerate(zip((left, right), labels)):
            frame = frames[i]
            if label:
                image = Image.fromarray(frame)
                _draw_label(image, str(label), font)
                frame = np.asarray(image)
            out[i, :, half * width : (half + 1) * width] = frame
    return out


def sample_indices(count: int, max_frames: int | None) -> list[int]:
    """Up to ``max_frames`` indices spread evenly over ``range(count)``, first and last included."""
    if max_frames is None or max_frames <= 0 or count <= max_frames:
        return list(range(count))
    if max_frames == 1:
        return [0]
    return sorted({int(round(i * (count - 1) / (max_frames - 1))) for i in range(max_frames)})


def frame_grid(
    rows: Iterable[tuple[str, object]],
    max_frames: int = 8,
    thumb_height: int | None = None,
    background=(255, 255, 255),
) -> Image.Image:
    """One picture with a row of frames per ``(label, frames)``; the label sits in a left column.

    At most ``max_frames`` frames per row, spread evenly over the video. ``thumb_height`` shrinks
    frames taller than it (never enlarges). Rows of another frame size are scaled to the first row's.
    """
    rows = [(str(label), to_uint8_frames(frames)) for label, frames in rows]
    if not rows:
        raise ValueError("frame_grid needs at least one row")
    height, width = rows[0][1].shape[1:3]
    if thumb_height and height > thumb_height:
        width = max(1, round(width * thumb_height / height))
        height = thumb_height
    gap = 2
    font = _font(max(10, min(16, height // 4)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max((_text_size(probe, label, font)[0] for label, _ in rows), default=0)
    label_width = label_width + 8 if label_width else 0
    columns = max(len(sample_indices(len(frames), max_frames)) for _, frames in rows)
    grid = Image.new(
        "RGB",
        (label_width + columns * (width + gap) + gap, len(rows) * (height + gap) + gap),
        background,
    )
    draw = ImageDraw.Draw(grid)
    for r, (label, frames) in enumerate(rows):
        top = gap + r * (height + gap)
        if label:
            text_w, text_h = _text_size(draw, label, font)
            draw.text((4, top + (height - text_h) // 2), label, fill=(0, 0, 0), font=font)
        for c, index in enumerate(sample_indices(len(frames), max_frames)):
            tile = Image.fromarray(frames[index])
            if tile.size != (width, height):
                tile = tile.resize((width, height), Image.BILINEAR)
            grid.paste(tile, (label_width + gap + c * (width + gap), top))
    return grid


def save_png(image, path) -> Path:
    """Save a PIL image (or an ``[H, W, C]`` array) as PNG, atomically. Returns the path."""
    path = Path(path)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(to_uint8_frames(np.asarray(image)[None])[0])

    def write(tmp: str) -> None:
        image.save(tmp, format="PNG")
        _usual_permissions(tmp)

    atomic_write(path, write)
    return path


# --------------------------------------------------------------------------------------------------
# folders of rendered videos

_SUFFIX = re.compile(r"^(?P<stem>.+)_(?P<side>[A-Za-z][A-Za-z0-9]*)$")


def split_side(name: str) -> tuple[str, str | None]:
    """``"003_cat_erased"`` -> ``("003_cat", "erased")``; a name without ``_suffix`` -> ``(name, None)``."""
    match = _SUFFIX.match(name)
    if not match:
        return name, None
    return match["stem"], match["side"]


def find_video_pairs(folder) -> list[tuple[str, dict[str, Path]]]:
    """Group the videos of ``folder`` by prompt: ``[(stem, {side: path, ...}), ...]`` sorted by stem.

    ``<stem>_clean.mp4`` and ``<stem>_erased.mp4`` (or the original release's ``<stem>_erase.mp4``)
    share one group; ``<stem>_compare.mp4`` joins it as side ``"compare"``. Another ``_suffix`` (e.g.
    ``_negprompt``) is a side of its own when a file with the same stem has a known suffix. Every
    other video is a group of its own under side ``"video"`` (:data:`PLAIN_SIDE`).
    Only the folder itself is searched, not its subfolders.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"Video folder '{folder}' does not exist or is not a folder. Pass the folder that holds the rendered .mp4 files.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    known_stems = set()
    for file in files:
        stem, side = split_side(file.stem)
        if side is not None and side.lower() in SIDE_ALIASES:
            known_stems.add(stem)

    groups: dict[str, dict[str, Path]] = {}
    for file in files:
        stem, side = split_side(file.stem)
        if side is not None and side.lower() in SIDE_ALIASES:
            side = SIDE_ALIASES[side.lower()]
        elif side is not None and stem in known_stems:
            side = side.lower()
        else:
            stem, side = file.stem, PLAIN_SIDE
        group = groups.setdefault(stem, {})
        if side in group:
            # e.g. both "_erase.mp4" and "_erased.mp4": the file spelled like the side name wins.
            keep = file if split_side(file.stem)[1] == side else group[side]
            logger.warning("Two '%s' videos for '%s' (%s, %s); using %s", side, stem, group[side].name, file.name, keep.name)
            group[side] = keep
        else:
            group[side] = file
    return sorted(groups.items())


def stem_index(stem: str) -> int | None:
    """The row index an inference output name starts with (``"007_a_cat"`` -> 7), or ``None``."""
    match = re.match(r"^(\d+)(?:_|$)", stem)
    return int(match.group(1)) if match else None
