"""Procedural scenes of coloured shapes moving on a plain background, and their captions.

Every concept in a caption (colour, shape, direction, background) is visible in pixels, so a
pixel classifier (:mod:`receler.world.classify`) can measure what a model generated. Videos are
``uint8`` arrays ``[frames, height, width, 3]`` in RGB order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Saturated colours roughly 60 degrees apart in hue, so a hue-based classifier separates them
# even when a generated frame is blurry, darker or noisy.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),  # hue ~0
    "yellow": (230, 220, 20),  # hue ~57
    "green": (20, 200, 20),  # hue ~120
    "cyan": (20, 210, 220),  # hue ~183
    "blue": (30, 60, 230),  # hue ~231
    "purple": (200, 30, 220),  # hue ~294
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Image coordinates: y grows downwards, so "up" is a negative y step.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
# Backgrounds are achromatic, so every (chromatic) shape colour stands out from them in hue
# as well as in RGB distance.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
}

# Every word a caption can contain, for a word-level tokenizer.
CAPTION_FILLER_WORDS: tuple[str, ...] = ("a", "moving", "and", "on", "background")
VOCABULARY: tuple[str, ...] = tuple(
    sorted(set(CAPTION_FILLER_WORDS) | set(COLORS) | set(SHAPES) | set(DIRECTIONS) | set(BACKGROUNDS))
)

# Geometry relative to the frame size; at 64 px: shapes of 19 px moving 3 px per frame.
SHAPE_SIZE_FRACTION = 0.3
SPEED_FRACTION_PER_FRAME = 3 / 64
# Shapes keep this many pixels away from the border, so the border shows only background
# (the classifier estimates the background from it).
BORDER_MARGIN = 2
MIN_FRAME_SIZE = 16
# Attempts to place two shapes so that they never overlap; after that, overlap is accepted.
MAX_PLACEMENT_ATTEMPTS = 1000


def _check_name(kind: str, name: str, allowed) -> None:
    if name not in allowed:
        raise ValueError(f"unknown {kind} {name!r}; expected one of: {', '.join(allowed)}")


@dataclass(frozen=True)
class ShapeSpec:
    """One shape in a scene: its colour, its form and the direction it moves in."""

    color: str
    shape: str
    direction: str

    def __post_init__(self):
        _check_name("color", self.color, COLORS)
        _check_name("shape", self.shape, SHAPES)
        _check_name("direction", self.direction, DIRECTIONS)

    def phrase(self, omit=()) -> str:
        """``a red circle moving left``; ``omit`` leaves attributes unsaid (``a circle moving left``,
        ``a red shape moving left``, ``a red circle``): a model trained on such captions learns what a
        prompt that does not say the colour (or shape, or direction) looks like."""
        color = "" if "color" in omit else f"{self.color} "
        shape = "shape" if "shape" in omit else self.shape
        motion = "" if "direction" in omit else f" moving {self.direction}"
        return f"a {color}{shape}{motion}"


@dataclass(frozen=True)
class Scene:
    """One or two moving shapes on a plain background."""

    shapes: tuple[ShapeSpec, ...]
    background: str

    def __post_init__(self):
        # Accept a list for convenience but store a tuple, so scenes stay hashable.
        object.__setattr__(self, "shapes", tuple(self.shapes))
        if not 1 <= len(self.shapes) <= 2:
            raise ValueError(f"a scene has 1 or 2 shapes, got {len(self.shapes)}")
        for spec in self.shapes:
            if not isinstance(spec, ShapeSpec):
                raise ValueError(f"scene shapes must be ShapeSpec, got {type(spec).__name__}")
        _check_name("background", self.background, BACKGROUNDS)

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(spec.color for spec in self.shapes)

    def caption(self, omit=()) -> str:
        """E.g. ``"a red circle moving left and a blue square moving up on a black background"``;
        ``omit`` as in :meth:`ShapeSpec.phrase` (such captions do not parse back)."""
        shapes_text = " and ".join(spec.phrase(omit) for spec in self.shapes)
        return f"{shapes_text} on a {self.background} background"

    def with_shapes_shifted(self, shift: int) -> "Scene":
        """The scene with every shape replaced by the one ``shift`` places later in :data:`SHAPES` (wrapping
        round): colours, directions and background stay. Rendered with the same seed it moves along the same paths
        (a path does not depend on the shape), so the two videos differ only in the shapes' outlines."""
        return Scene(tuple(ShapeSpec(spec.color, SHAPES[(SHAPES.index(spec.shape) + shift) % len(SHAPES)],
                                     spec.direction) for spec in self.shapes), self.background)


def _choose(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _allowed(kind: str, requested, vocabulary) -> list[str]:
    """The requested subset of a vocabulary (all of it when ``requested`` is None)."""
    if requested is None:
        return list(vocabulary)
    chosen = list(requested)
    if not chosen:
        raise ValueError(f"the list of allowed {kind}s is empty")
    for name in chosen:
        _check_name(kind, name, vocabulary)
    return chosen


def sample_scene(
    rng: np.random.Generator,
    two_shape_prob: float = 0.3,
    colors=None,
    shapes=None,
    directions=None,
    backgrounds=None,
) -> Scene:
    """Draw a random scene; ``colors``/``shapes``/``directions``/``backgrounds`` restrict the choices.

    The two shapes of a two-shape scene always have different colours (so each colour in a
    caption is a separate, measurable object); with a single allowed colour every scene has
    one shape.
    """
    if not 0.0 <= two_shape_prob <= 1.0:
        raise ValueError(f"two_shape_prob must be in [0, 1], got {two_shape_prob}")
    color_names = _allowed("color", colors, COLORS)
    shape_names = _allowed("shape", shapes, SHAPES)
    direction_names = _allowed("direction", directions, DIRECTIONS)
    background_names = _allowed("background", backgrounds, BACKGROUNDS)

    # Always draw the coin, so the random stream does not depend on the number of colours.
    wants_two = rng.random() < two_shape_prob
    num_shapes = 2 if wants_two and len(set(color_names)) >= 2 else 1
    first_color = _choose(rng, color_names)
    specs = [ShapeSpec(first_color, _choose(rng, shape_names), _choose(rng, direction_names))]
    if num_shapes == 2:
        other_colors = [name for name in color_names if name != first_color]
        specs.append(ShapeSpec(_choose(rng, other_colors), _choose(rng, shape_names), _choose(rng, direction_names)))
    return Scene(tuple(specs), _choose(rng, background_names))


def _expect(words: list[str], position: int, expected: str, caption: str) -> None:
    found = words[position] if position < len(words) else "<end of caption>"
    if found != expected:
        raise ValueError(
            f"cannot parse caption {caption!r}: expected {expected!r} at word {position + 1}, got {found!r}"
        )


def _expect_vocabulary(words: list[str], position: int, kind: str, vocabulary, caption: str) -> str:
    found = words[position] if position < len(words) else "<end of caption>"
    if found not in vocabulary:
        raise ValueError(
            f"cannot parse caption {caption!r}: expected a {kind} ({', '.join(vocabulary)}) "
            f"at word {position + 1}, got {found!r}"
        )
    return found


def scene_from_caption(caption: str) -> Scene:
    """Parse a caption written by :meth:`Scene.caption` back into a scene (case and spacing ignored).

    Raises ValueError on unknown words or any other deviation from the caption grammar.
    """
    words = caption.lower().split()
    specs = []
    position = 0
    while True:
        _expect(words, position, "a", caption)
        color = _expect_vocabulary(words, position + 1, "color", COLORS, caption)
        shape = _expect_vocabulary(words, position + 2, "shape", SHAPES, caption)
        _expect(words, position + 3, "moving", caption)
        direction = _expect_vocabulary(words, position + 4, "direction", DIRECTIONS, caption)
        specs.append(ShapeSpec(color, shape, direction))
        position += 5
        if position < len(words) and words[position] == "and":
            position += 1
            continue
        break
    _expect(words, position, "on", caption)
    _expect(words, position + 1, "a", caption)
    background = _expect_vocabulary(words, position + 2, "background", BACKGROUNDS, caption)
    _expect(words, position + 3, "background", caption)
    if len(words) != position + 4:
        extra = " ".join(words[position + 4 :])
        raise ValueError(f"cannot parse caption {caption!r}: unexpected words after the background: {extra!r}")
    if len(specs) > 2:
        raise ValueError(f"cannot parse caption {caption!r}: a scene has at most 2 shapes, got {len(specs)}")
    return Scene(tuple(specs), background)


def check_num_frames(num_frames: int) -> None:
    """Raise ValueError unless ``num_frames`` is 4k+1 (the CogVideoX VAE compresses time by 4)."""
    if num_frames >= 1 and (num_frames - 1) % 4 == 0:
        return
    below = (num_frames - 1) // 4 * 4 + 1
    above = below + 4
    if below < 1:
        nearest = "the nearest valid count is 1"
    else:
        nearest = f"the nearest valid counts are {below} and {above}"
    raise ValueError(f"num_frames must be 4k+1 (1, 5, 9, 13, ...), got {num_frames}; {nearest}")


def shape_size_for(size: int) -> int:
    """Side of a shape's bounding box in pixels for a frame of ``size`` pixels."""
    return max(6, round(size * SHAPE_SIZE_FRACTION))


def check_shape_size(side: int, size: int) -> None:
    """Refuse a shape side that does not fit a ``size`` px frame with its border margin."""
    largest = size - 2 * BORDER_MARGIN
    if not 6 <= side <= largest:
        raise ValueError(f"shape_size must be 6 to {largest} px in a {size} px frame, got {side}")


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean ``[side, side]`` stencil of a shape filling its bounding box.

    Pixels are tested at their centres, so the stencil is exact and does not depend on any
    drawing library's rasteriser (keeps videos bit-identical across versions).
    """
    _check_name("shape", shape, SHAPES)
    centres = np.arange(side) + 0.5
    y, x = np.meshgrid(centres, centres, indexing="ij")
    half = side / 2
    if shape == "circle":
        return (x - half) ** 2 + (y - half) ** 2 <= half**2
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    # Triangle pointing up: apex at the top centre, base along the bottom edge.
    return np.abs(x - half) <= half * y / side


def _trajectory(rng, direction: str, num_frames: int, size: int, side: int, grid: int = 1) -> np.ndarray:
    """Top-left corners ``[num_frames, 2]`` (x, y) of a shape moving in ``direction``.

    The start is chosen so that the whole path stays inside the frame: the shape never
    bounces (a bounce would show the opposite direction). When the path cannot fit, the
    speed is reduced instead. With ``grid`` > 1 the start is a multiple of ``grid`` pixels
    (see :func:`render_video`).
    """
    low = BORDER_MARGIN
    free = size - side - 2 * BORDER_MARGIN  # room for the top-left corner along either axis
    steps = num_frames - 1
    speed = size * SPEED_FRACTION_PER_FRAME
    if steps > 0:
        speed = min(speed, free / steps)
    travel = speed * steps
    dx, dy = DIRECTIONS[direction]

    def draw_start(step_sign: int) -> float:
        # The first start that keeps the whole path inside the frame, and the room after it.
        first = low + travel if step_sign < 0 else low
        room = free if step_sign == 0 else free - travel
        if grid == 1:
            return first + rng.uniform(0.0, room)
        points = np.arange(math.ceil(first / grid) * grid, math.floor((first + room) / grid) * grid + 1, grid)
        if len(points) == 0:
            raise ValueError(f"no start on a {grid} px grid fits a {side} px shape in a {size} px frame")
        return float(points[rng.integers(len(points))])

    x0, y0 = draw_start(dx), draw_start(dy)
    t = np.arange(num_frames)
    positions = np.stack([x0 + dx * speed * t, y0 + dy * speed * t], axis=1)
    # Integer positions keep the shape's stencil identical in every frame.
    return np.rint(positions).astype(np.int64)


def _overlap_area(path_a: np.ndarray, path_b: np.ndarray, side: int, gap: int = 2) -> int:
    """Summed overlap (in pixels) of the two shapes' boxes, each grown by ``gap``, over all frames."""
    distance = np.abs(path_a - path_b)
    overlap = np.clip(side + gap - distance, 0, None)
    return int((overlap[:, 0] * overlap[:, 1]).sum())


def render_video(
    scene: Scene, num_frames: int = 9, size: int = 64, seed: int = 0, position_grid: int = 1,
    shape_size: int | None = None,
) -> np.ndarray:
    """Render ``scene`` as ``uint8 [num_frames, size, size, 3]`` (RGB), deterministic in (scene, seed).

    The seed picks the start positions; each shape moves a few pixels per frame in its
    direction and stays fully inside the frame. Two shapes are placed so that they do not
    overlap whenever such a placement is found. ``position_grid`` > 1 starts every shape at
    a multiple of that many pixels (e.g. 4, a latent pixel of a VAE that compresses space by
    4, so that scenes differ by whole latent pixels); 1 allows any pixel. ``shape_size`` is the
    side of a shape's box in pixels (default: :func:`shape_size_for` the frame, 19 px at 64 px).
    """
    check_num_frames(num_frames)
    if size < MIN_FRAME_SIZE:
        raise ValueError(f"size must be at least {MIN_FRAME_SIZE} pixels, got {size}")
    if position_grid < 1:
        raise ValueError(f"position_grid must be at least 1 pixel, got {position_grid}")
    side = shape_size_for(size) if shape_size is None else shape_size
    check_shape_size(side, size)
    rng = np.random.default_rng(seed)

    def draw_paths():
        return [_trajectory(rng, spec.direction, num_frames, size, side, position_grid) for spec in scene.shapes]

    paths = draw_paths()
    if len(paths) == 2:
        # Rejection sampling; both paths are redrawn because a first shape in the middle may
        # leave no room for the second. Shapes moving at right angles rarely miss each other
        # (~2 % of draws at 64 px, 9 frames), hence the many attempts; if none is free, keep the
        # draw with the least overlap.
        best_overlap = _overlap_area(paths[0], paths[1], side)
        for _ in range(MAX_PLACEMENT_ATTEMPTS - 1):
            if best_overlap == 0:
                break
            candidate = draw_paths()
            overlap = _overlap_area(candidate[0], candidate[1], side)
            if overlap < best_overlap:
                paths, best_overlap = candidate, overlap
        if best_overlap > 0:
            logger.debug("shapes of %r overlap (seed %d): no free placement found", scene.caption(), seed)

    video = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUNDS[scene.background]
    for spec, path in zip(scene.shapes, paths):
        stencil = shape_mask(spec.shape, side)
        color = np.array(COLORS[spec.color], dtype=np.uint8)
        for frame, (x, y) in zip(video, path):
            region = frame[y : y + side, x : x + side]
            region[stencil] = color
    return video


def make_dataset(
    n: int,
    seed: int,
    num_frames: int = 9,
    size: int = 64,
    two_shape_prob: float = 0.3,
    colors=None,
    position_grid: int = 1,
    shape_size: int | None = None,
    shape_shift: int = 0,
) -> list[tuple[str, np.ndarray]]:
    """``n`` deterministic (caption, video) pairs; the first k items do not depend on ``n``.

    ``position_grid``, ``shape_size``: see :func:`render_video`. ``shape_shift`` draws the same scenes and paths
    with every shape replaced (:meth:`Scene.with_shapes_shifted`): item i of the shifted dataset is item i of the
    plain one drawn as other shapes."""
    check_num_frames(num_frames)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = np.random.default_rng(seed)
    dataset = []
    for _ in range(n):
        scene = sample_scene(rng, two_shape_prob=two_shape_prob, colors=colors).with_shapes_shifted(shape_shift)
        video_seed = int(rng.integers(2**31))
        dataset.append((scene.caption(), render_video(scene, num_frames=num_frames, size=size, seed=video_seed,
                                                    position_grid=position_grid, shape_size=shape_size)))
    logger.debug("made %d videos of %d frames at %d px (seed %d)", n, num_frames, size, seed)
    return dataset


def evaluation_prompts(target_color: str = "red", quick: bool = False, background: str = "gray") -> list[dict]:
    """Fixed single-shape evaluation prompts: every colour x shape x direction on one background.

    Each item is ``{"prompt", "color", "shape", "direction", "is_target", "seed"}``; the seed is
    the item's index in the full list, so a ``quick`` item has the same seed as in the full set.
    ``quick=True`` keeps a subset of 2 prompts per non-target colour and 4 target prompts
    (covering every shape and direction of the target colour).
    """
    _check_name("color", target_color, COLORS)
    _check_name("background", background, BACKGROUNDS)
    prompts = []
    for color in COLORS:
        for shape in SHAPES:
            for direction in DIRECTIONS:
                scene = Scene((ShapeSpec(color, shape, direction),), background)
                prompts.append(
                    {
                        "prompt": scene.caption(),
                        "color": color,
                        "shape": shape,
                        "direction": direction,
                        "is_target": color == target_color,
                        "seed": len(prompts),
                    }
                )
    if not quick:
        return prompts

    direction_names = list(DIRECTIONS)
    wanted = set()
    for color_index, color in enumerate(COLORS):
        # Rotate shapes and directions with the colour so the subset covers all of them.
        count = len(direction_names) if color == target_color else 2
        for k in range(count):
            shape = SHAPES[(color_index + k) % len(SHAPES)]
            direction = direction_names[(color_index + k) % len(direction_names)]
            wanted.add((color, shape, direction))
    return [item for item in prompts if (item["color"], item["shape"], item["direction"]) in wanted]
