"""Deterministic pixel classifier for the shapes world: which colour and shape a frame shows.

Designed to judge a small generative model's output, so it must tolerate blur, noise,
brightness changes and compression artefacts:

* the background is the median colour of the border (it need not match the palette exactly);
* foreground is whatever is far from the background, after a 3x3 median filter removes
  isolated noisy pixels;
* colours are judged by hue, which survives darkening, blur towards an achromatic background
  and moderate noise, and only on pixels with enough chroma to have a meaningful hue;
* the shape comes from simple geometry of the largest foreground blob, cut at half its own
  contrast to undo blur: the fill ratio of its bounding box (square ~1.0, circle ~0.8,
  triangle ~0.5) and, for triangles whose corners blur rounded, the share of its area in the
  bottom half of the box (the world's triangles point up);
* the direction of motion is the dominant axis of the blob's centroid track over the frames
  (a least-squares slope, so one bad frame does not flip it), and only when the blob travels
  far enough to be called moving;
* an object can be picked by colour (the foreground blob holding most of that colour's
  pixels), so each shape of a two-shape video is read on its own.

Frames are ``uint8`` RGB ``[H, W, 3]``, videos ``[F, H, W, 3]``; convert model output first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from receler.world.scenes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES

# RGB distance from the background above which a pixel is foreground. Palette colours are at
# least ~150 away from every background; noise of sigma 20 rarely exceeds 60 after the median filter.
FOREGROUND_DISTANCE = 60.0
# Below this chroma (max - min channel, 0..255) a pixel's hue is too unreliable to name a colour.
MIN_CHROMA = 40.0
# Less foreground than this fraction of the frame counts as "nothing there" (a 64 px frame
# has 4096 pixels; the smallest rendered shape, a triangle, covers ~4 % of it).
MIN_FOREGROUND_FRACTION = 0.005
# Fill-ratio boundaries between triangle (~0.5), circle (~0.785) and square (~1.0).
TRIANGLE_CIRCLE_BOUNDARY = 0.64
CIRCLE_SQUARE_BOUNDARY = 0.89
# Share of a blob's area in the bottom half of its bounding box: 0.75 for the upward triangle,
# 0.5 for circle and square.
TRIANGLE_MIN_BOTTOM_SHARE = 0.6
# Gaussian sigma (pixels) applied to the distance map before cutting out a blob's outline.
SHAPE_SMOOTHING_SIGMA = 1.0
# video_shows_color: a colour is "shown" in a frame when it covers at least this fraction of
# the foreground (two equal shapes get ~0.5 each).
DEFAULT_MIN_COLOR_FRACTION = 0.2
# classify_frame names no colour when even the commonest one covers less of the foreground
# than this (a grey or washed-out blob has no colour).
MIN_DOMINANT_COLOR_FRACTION = 0.2

# A blob whose centroid travels less than this fraction of the frame width over the clip is not
# moving (ground truth travels 3/64 of the frame per frame: 24 px over 9 frames at 64 px).
MIN_TRAVEL_FRACTION = 0.06
# A frame's border must be within this RGB distance of a palette background to be named (gray and black
# are 222 apart, so a darkened or brightened gray still reads as gray).
MAX_BACKGROUND_DISTANCE = 100.0

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)


def _hue_and_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360) and chroma (max - min) of float RGB pixels ``[..., 3]``."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = rgb.max(axis=-1)
    chroma = high - rgb.min(axis=-1)
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(
        high == red,
        ((green - blue) / safe) % 6.0,
        np.where(high == green, (blue - red) / safe + 2.0, (red - green) / safe + 4.0),
    )
    return (hue * 60.0) % 360.0, chroma


PALETTE_HUES = _hue_and_chroma(np.array([COLORS[name] for name in COLOR_NAMES], dtype=np.float64))[0]


@dataclass(frozen=True)
class FrameLabel:
    """What one frame shows: dominant colour, shape of the largest blob, share of foreground pixels, and the fill
    ratio the shape was read from (None without a shape)."""

    color: str | None
    shape: str | None
    foreground_fraction: float
    fill_ratio: float | None = None


@dataclass(frozen=True)
class VideoLabel:
    """Majority colour and shape over a video's frames, with the per-frame labels behind them, and
    what the whole clip shows: the direction the largest blob moves in, the background, and the
    blob's median area as a fraction of the frame (0 when nothing is there)."""

    color: str | None
    shape: str | None
    per_frame: list[FrameLabel] = field(default_factory=list)
    direction: str | None = None
    background: str | None = None
    area: float = 0.0

    @property
    def fill_ratio(self) -> float | None:
        """Median over the frames of the largest blob's fill ratio, the number its shape is read from (square ~1.0,
        circle ~0.8, triangle ~0.5; squares from ``CIRCLE_SQUARE_BOUNDARY`` up): how close a drawn shape came to
        being read as another. None when no frame shows a shape."""
        fills = [label.fill_ratio for label in self.per_frame if label.fill_ratio is not None]
        return float(np.median(fills)) if fills else None


@dataclass(frozen=True)
class ObjectLabel:
    """One object of a video (the largest blob, or the blob of a given colour) over the clip."""

    shape: str | None
    direction: str | None
    area: float  # median fraction of the frame it covers, over the frames where it is present
    present: float  # fraction of frames where it is found


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a frame of shape [H, W, 3], got {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {frame.dtype}")
    if min(frame.shape[:2]) < 3:
        raise ValueError(f"frame too small to classify: {frame.shape}")
    return frame


def _check_video(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"expected frames of shape [F, H, W, 3] with F >= 1, got {frames.shape}")
    return frames


@dataclass(frozen=True)
class _Analysis:
    distance: np.ndarray  # float32 [H, W]: RGB distance from the background
    foreground: np.ndarray  # bool [H, W]
    color_index: np.ndarray  # int [H, W]: palette index per pixel, -1 where unassigned
    background: np.ndarray  # float32 [3]: the border's median colour

    @property
    def enough_foreground(self) -> bool:
        return self.foreground.mean() >= MIN_FOREGROUND_FRACTION


def _analyse(frame: np.ndarray) -> _Analysis:
    frame = _check_frame(frame)
    # The median filter removes isolated noisy pixels but keeps the shapes' edges sharp.
    smoothed = cv2.medianBlur(np.ascontiguousarray(frame), 3).astype(np.float32)
    border = np.concatenate([smoothed[0], smoothed[-1], smoothed[1:-1, 0], smoothed[1:-1, -1]])
    background = np.median(border, axis=0).astype(np.float32)
    distance = np.linalg.norm(smoothed - background, axis=-1)
    foreground = distance > FOREGROUND_DISTANCE

    hue, chroma = _hue_and_chroma(smoothed)
    hue_gap = np.abs((hue[..., None] - PALETTE_HUES + 180.0) % 360.0 - 180.0)
    nearest = hue_gap.argmin(axis=-1)
    color_index = np.where(foreground & (chroma >= MIN_CHROMA), nearest, -1)
    return _Analysis(distance, foreground, color_index, background)


def _fractions(analysis: _Analysis) -> dict[str, float]:
    total = int(analysis.foreground.sum())
    if not analysis.enough_foreground or total == 0:
        return {name: 0.0 for name in COLOR_NAMES}
    counts = np.bincount(analysis.color_index[analysis.color_index >= 0], minlength=len(COLOR_NAMES))
    return {name: float(counts[i]) / total for i, name in enumerate(COLOR_NAMES)}


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Mask and stats row (x, y, width, height, area) of the largest 8-connected blob."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:  # label 0 is the background
        return None, None
    blob = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == blob, stats[blob]


def _shape_features(blob: np.ndarray) -> tuple[float, float]:
    """(fill ratio of the bounding box, share of the area in the bottom half of the box)."""
    rows = np.flatnonzero(blob.any(axis=1))
    cols = np.flatnonzero(blob.any(axis=0))
    top, bottom = rows[0], rows[-1] + 1
    height, width = bottom - top, cols[-1] + 1 - cols[0]
    area = blob.sum()
    # Rows straddling the middle of the box count half to each half.
    row_areas = blob[top:bottom].sum(axis=1).astype(np.float64)
    row_centres = np.arange(height) + 0.5
    weights = np.clip(row_centres - height / 2 + 0.5, 0.0, 1.0)
    bottom_share = float((row_areas * weights).sum() / area)
    return float(area / (height * width)), bottom_share


def _object_blob(analysis: _Analysis, color: str | None) -> np.ndarray | None:
    """The largest foreground blob, or (``color`` given) the blob holding most of that colour's pixels.

    None when the frame has too little foreground, or no pixel of the colour.
    """
    if not analysis.enough_foreground:
        return None
    if color is None:
        blob, stats = _largest_component(analysis.foreground)
        if blob is None or stats[cv2.CC_STAT_AREA] < MIN_FOREGROUND_FRACTION * analysis.foreground.size:
            return None
        return blob
    count, labels = cv2.connectedComponents(analysis.foreground.astype(np.uint8), connectivity=8)
    of_color = labels[analysis.color_index == COLOR_NAMES.index(color)]
    counts = np.bincount(of_color[of_color > 0], minlength=count)
    best = int(counts.argmax())
    # A few pixels of a hue at the blurred border of two other colours are not an object of that colour.
    if best == 0 or counts[best] < DEFAULT_MIN_COLOR_FRACTION * (labels == best).sum():
        return None
    return labels == best


def _core_features(distance: np.ndarray, blob: np.ndarray | None) -> tuple[float, float] | None:
    """(fill ratio, bottom share) of the blob's core, the outline the shape is read from; None without one."""
    if blob is None:
        return None
    # Blur widens a shape at the fixed threshold and rounds it; cutting at half its own
    # contrast recovers the outline the shape had before blurring.
    # Smoothing first keeps noise from fraying the outline (which would lower a square's fill).
    smooth_distance = cv2.GaussianBlur(distance, (0, 0), SHAPE_SMOOTHING_SIGMA)
    half_contrast = 0.5 * float(np.percentile(smooth_distance[blob], 90))
    core, _ = _largest_component(blob & (smooth_distance > half_contrast))
    return None if core is None else _shape_features(core)


def _shape_from_features(features: tuple[float, float] | None) -> str | None:
    if features is None:
        return None
    fill, bottom_share = features
    # Blur cuts off a triangle's apex and corners, which raises its fill ratio towards a
    # circle's; that its area sits mostly in the bottom half (it points up) survives blur.
    if fill < TRIANGLE_CIRCLE_BOUNDARY or bottom_share >= TRIANGLE_MIN_BOTTOM_SHARE:
        return "triangle"
    if fill >= CIRCLE_SQUARE_BOUNDARY:
        return "square"
    return "circle"


def _shape_of_blob(distance: np.ndarray, blob: np.ndarray | None) -> str | None:
    return _shape_from_features(_core_features(distance, blob))


def video_fill_ratio(frames: np.ndarray) -> float | None:
    """The fill ratio a video's shape is read from (:attr:`VideoLabel.fill_ratio`)."""
    return classify_video(frames).fill_ratio


def frame_color_fractions(frame: np.ndarray) -> dict[str, float]:
    """For every palette colour, the fraction of the frame's foreground pixels showing it.

    Foreground pixels too grey to have a hue count in the denominator but for no colour, so
    the fractions sum to at most 1; a frame with (almost) no foreground gives all zeros.
    """
    return _fractions(_analyse(frame))


def classify_frame(frame: np.ndarray) -> FrameLabel:
    """Dominant colour (by hue), shape of the largest blob and foreground fraction of one frame.

    ``color`` and ``shape`` are None when there is (almost) no foreground; ``color`` is also
    None when the foreground is mostly grey.
    """
    return _label_frame(_analyse(frame))


def _label_frame(analysis: _Analysis) -> FrameLabel:
    foreground_fraction = float(analysis.foreground.mean())
    if not analysis.enough_foreground:
        return FrameLabel(None, None, foreground_fraction)
    fractions = _fractions(analysis)
    best = max(COLOR_NAMES, key=lambda name: fractions[name])  # ties: palette order
    color = best if fractions[best] >= MIN_DOMINANT_COLOR_FRACTION else None
    features = _core_features(analysis.distance, _object_blob(analysis, None))
    return FrameLabel(color, _shape_from_features(features), foreground_fraction,
                      None if features is None else features[0])


def _majority(labels: list, order: tuple[str, ...]) -> str | None:
    """Most frequent label; ties prefer a real label over None, then the vocabulary order."""
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label is None, order.index(label) if label else 0))


def classify_video(frames: np.ndarray) -> VideoLabel:
    """Classify every frame of ``[F, H, W, 3]``: majority colour and shape, the largest blob's direction
    and area, and the background."""
    analyses = [_analyse(frame) for frame in _check_video(frames)]
    per_frame = [_label_frame(analysis) for analysis in analyses]
    color = _majority([label.color for label in per_frame], COLOR_NAMES)
    shape = _majority([label.shape for label in per_frame], SHAPES)
    largest = _describe(analyses, None)
    return VideoLabel(color, shape, per_frame, largest.direction, _background_of(analyses), largest.area)


def _direction_of_track(centroids: list, width: int) -> str | None:
    """Direction of a centroid track (``(frame, x, y)`` rows): the dominant axis of its least-squares
    velocity, when the blob travels at least ``MIN_TRAVEL_FRACTION`` of the frame over the clip."""
    if len(centroids) < 2:
        return None
    track = np.asarray(centroids, dtype=np.float64)
    t = track[:, 0] - track[:, 0].mean()
    if not (t**2).sum():
        return None
    velocity = (t[:, None] * (track[:, 1:] - track[:, 1:].mean(axis=0))).sum(axis=0) / (t**2).sum()
    span = track[-1, 0] - track[0, 0]
    if np.abs(velocity).max() * span < MIN_TRAVEL_FRACTION * width:
        return None
    axis = int(np.argmax(np.abs(velocity)))
    step = [0, 0]
    step[axis] = int(np.sign(velocity[axis]))
    return next(name for name, vector in DIRECTIONS.items() if list(vector) == step)


def describe_object(frames: np.ndarray, color: str | None = None) -> ObjectLabel:
    """Shape, direction and size of one object over a video: the largest blob, or the blob of ``color``
    (so each shape of a two-shape video can be read on its own)."""
    if color is not None and color not in COLORS:
        raise ValueError(f"unknown color {color!r}; expected one of: {', '.join(COLOR_NAMES)}")
    return _describe([_analyse(frame) for frame in _check_video(frames)], color)


def _describe(analyses: list, color: str | None) -> ObjectLabel:
    shapes, centroids, areas = [], [], []
    for index, analysis in enumerate(analyses):
        blob = _object_blob(analysis, color)
        if blob is None:
            continue
        ys, xs = np.nonzero(blob)
        centroids.append((index, xs.mean(), ys.mean()))
        areas.append(blob.mean())
        shapes.append(_shape_of_blob(analysis.distance, blob))
    return ObjectLabel(
        shape=_majority(shapes, SHAPES) if shapes else None,
        direction=_direction_of_track(centroids, analyses[0].foreground.shape[1]),
        area=float(np.median(areas)) if areas else 0.0,
        present=len(areas) / len(analyses),
    )


def video_background(frames: np.ndarray) -> str | None:
    """The palette background nearest to the frames' median border colour (None when none is close)."""
    return _background_of([_analyse(frame) for frame in _check_video(frames)])


def _background_of(analyses: list) -> str | None:
    border = np.median([analysis.background for analysis in analyses], axis=0)
    distances = {name: float(np.linalg.norm(border - np.array(rgb, dtype=np.float32)))
                 for name, rgb in BACKGROUNDS.items()}
    best = min(distances, key=distances.get)
    return best if distances[best] <= MAX_BACKGROUND_DISTANCE else None


def video_shows_color(frames: np.ndarray, color: str, min_fraction: float = DEFAULT_MIN_COLOR_FRACTION) -> bool:
    """True when ``color`` covers at least ``min_fraction`` of the foreground in most frames.

    Works for two-shape videos: each shape's colour covers about half of the foreground.
    """
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; expected one of: {', '.join(COLOR_NAMES)}")
    frames = _check_video(frames)
    showing = sum(frame_color_fractions(frame)[color] >= min_fraction for frame in frames)
    return showing * 2 > len(frames)
