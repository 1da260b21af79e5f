"""Tests for the shapes world: scene generator, captions, and the pixel classifier.

Ground truth always comes from the scene spec (or from plain numpy on the rendered pixels),
never from the classifier under test.
"""

import colorsys
import itertools

import cv2
import numpy as np
import pytest

from receler.world import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    SHAPES,
    VOCABULARY,
    Scene,
    ShapeSpec,
    classify_frame,
    classify_video,
    describe_object,
    evaluation_prompts,
    frame_color_fractions,
    make_dataset,
    render_video,
    sample_scene,
    scene_from_caption,
    video_shows_color,
)


def single_shape_cases(seeds_per_combo=2):
    """Every colour x shape x direction x background, ``seeds_per_combo`` videos each."""
    cases = []
    combos = itertools.product(COLORS, SHAPES, DIRECTIONS, BACKGROUNDS)
    for index, (color, shape, direction, background) in enumerate(combos):
        scene = Scene((ShapeSpec(color, shape, direction),), background)
        for k in range(seeds_per_combo):
            cases.append((scene, render_video(scene, seed=1000 * k + index)))
    return cases


@pytest.fixture(scope="module")
def ground_truth_videos():
    return single_shape_cases()  # 6 x 3 x 4 x 2 x 2 = 288 videos


# --- degradations that imitate a small generative model's output -------------------------


def blur(video, rng):
    return np.stack([cv2.GaussianBlur(frame, (0, 0), rng.uniform(1.0, 2.0)) for frame in video])


def add_noise(video, rng, sigma=15.0):
    return np.clip(video + rng.normal(0.0, sigma, video.shape), 0, 255).astype(np.uint8)


def scale_brightness(video, rng):
    return np.clip(video * rng.choice([0.7, 0.85, 1.2]), 0, 255).astype(np.uint8)


def jpeg(video, rng, quality=30):
    frames = []
    for frame in video:
        _, encoded = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        frames.append(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1])
    return np.stack(frames)


def all_together(video, rng):
    return jpeg(add_noise(scale_brightness(blur(video, rng), rng), rng, sigma=10.0), rng, quality=50)


DEGRADATIONS = {
    "blur": blur,
    "noise": add_noise,
    "noise20": lambda video, rng: add_noise(video, rng, sigma=20.0),
    "brightness": scale_brightness,
    "jpeg": jpeg,
    "all_together": all_together,
}


# --- vocabularies ---------------------------------------------------------------------------


def test_colours_are_saturated_and_well_separated_in_hue():
    hues = {}
    for name, rgb in COLORS.items():
        hue, saturation, _ = colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))
        assert saturation > 0.8, name
        hues[name] = hue * 360
    for a, b in itertools.combinations(hues, 2):
        gap = abs(hues[a] - hues[b]) % 360
        assert min(gap, 360 - gap) >= 45, (a, b)


def test_every_colour_contrasts_with_every_background():
    for background, bg_rgb in BACKGROUNDS.items():
        assert len(set(bg_rgb)) == 1, f"{background} should be achromatic"
        for color, rgb in COLORS.items():
            distance = np.linalg.norm(np.subtract(rgb, bg_rgb, dtype=float))
            assert distance >= 120, (color, background)


# --- generator ------------------------------------------------------------------------------


def test_render_is_deterministic_per_seed():
    scene = Scene((ShapeSpec("red", "circle", "left"), ShapeSpec("blue", "square", "up")), "black")
    first = render_video(scene, seed=3)
    assert np.array_equal(first, render_video(scene, seed=3))
    assert not np.array_equal(first, render_video(scene, seed=4))


def test_make_dataset_is_deterministic():
    first = make_dataset(12, seed=5)
    again = make_dataset(12, seed=5)
    assert [caption for caption, _ in first] == [caption for caption, _ in again]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))
    other = make_dataset(12, seed=6)
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(first, other))
    # A longer dataset starts with the shorter one.
    prefix = make_dataset(5, seed=5)
    assert all(ca == cb and np.array_equal(a, b) for (ca, a), (cb, b) in zip(prefix, first))


def test_a_dataset_drawn_as_other_shapes_changes_only_the_outlines():
    plain = make_dataset(24, seed=11, two_shape_prob=0.5)
    shifted = make_dataset(24, seed=11, two_shape_prob=0.5, shape_shift=1)
    next_shape = {"circle": "square", "square": "triangle", "triangle": "circle"}
    single = 0
    for (caption, video), (other_caption, other_video) in zip(plain, shifted):
        scene, other = scene_from_caption(caption), scene_from_caption(other_caption)
        assert other.background == scene.background
        assert [(s.color, next_shape[s.shape], s.direction) for s in scene.shapes] == \
            [(s.color, s.shape, s.direction) for s in other.shapes]
        assert not np.array_equal(video, other_video)
        if len(scene.shapes) == 1:
            single += 1
            # Same path: in every frame the shape's pixels span the same box (each shape touches all four sides).
            background = np.array(BACKGROUNDS[scene.background], dtype=np.uint8)
            for frame, other_frame in zip(video, other_video):
                boxes = []
                for f in (frame, other_frame):
                    ys, xs = np.nonzero((f != background).any(axis=-1))
                    boxes.append((ys.min(), ys.max(), xs.min(), xs.max()))
                assert boxes[0] == boxes[1]
    assert single >= 5
    # Shifting by a whole turn of the three shapes gives the plain dataset back, bit for bit.
    whole_turn = make_dataset(24, seed=11, two_shape_prob=0.5, shape_shift=3)
    assert all(a == b and np.array_equal(x, y) for (a, x), (b, y) in zip(plain, whole_turn))


@pytest.mark.parametrize("num_frames, size", [(9, 64), (5, 32), (17, 64), (1, 48)])
def test_render_format_and_motion(num_frames, size):
    rng = np.random.default_rng(11)
    for seed in range(20):
        scene = sample_scene(rng, two_shape_prob=0.5)
        video = render_video(scene, num_frames=num_frames, size=size, seed=seed)
        assert video.shape == (num_frames, size, size, 3) and video.dtype == np.uint8

        background = np.array(BACKGROUNDS[scene.background])
        allowed = [background] + [np.array(COLORS[color]) for color in scene.colors]
        is_allowed = np.zeros(video.shape[:3], dtype=bool)
        for rgb in allowed:
            is_allowed |= (video == rgb).all(axis=-1)
        assert is_allowed.all(), "only the background and the scene's colours may appear"
        # Shapes stay inside the frame: the outermost pixels show background only.
        for border in (video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]):
            assert (border == background).all()

        for spec in scene.shapes:
            mask = (video == np.array(COLORS[spec.color])).all(axis=-1)
            pixel_counts = mask.sum(axis=(1, 2))
            assert pixel_counts.min() > 0.02 * size * size
            assert (pixel_counts == pixel_counts[0]).all(), "the shape is never clipped or hidden"
            if num_frames == 1:
                continue
            ys, xs = np.nonzero(mask[0])
            ye, xe = np.nonzero(mask[-1])
            moved = np.array([xe.mean() - xs.mean(), ye.mean() - ys.mean()])
            dx, dy = DIRECTIONS[spec.direction]
            along = moved @ np.array([dx, dy])
            across = moved @ np.array([dy, dx])
            assert along >= num_frames - 1, (spec, moved)  # at least ~1 px per frame
            assert abs(across) < 1e-9, (spec, moved)


def test_two_shapes_do_not_overlap():
    # Shapes moving at right angles are the hardest to keep apart.
    for seed in range(40):
        scene = Scene((ShapeSpec("red", "square", "left"), ShapeSpec("green", "square", "down")), "gray")
        video = render_video(scene, seed=seed)
        for color in scene.colors:
            counts = (video == np.array(COLORS[color])).all(axis=-1).sum(axis=(1, 2))
            assert (counts == counts[0]).all()


def top_left_corners(video: np.ndarray, color: str) -> np.ndarray:
    """(x, y) of the top-left corner of ``color``'s bounding box in every frame."""
    corners = []
    for frame in video:
        ys, xs = np.nonzero((frame == np.array(COLORS[color])).all(axis=-1))
        corners.append((xs.min(), ys.min()))
    return np.array(corners)


def test_position_grid_starts_every_shape_on_the_grid_and_uses_every_grid_point():
    # At 64 px a square is 19 px, the border margin 2 px, so a corner lies in [2, 43]; moving
    # right (3 px x 8 frames = 24 px) it must start in [2, 19], moving left in [26, 43]. Worked
    # out by hand: the multiples of 4 in those ranges.
    expected = {"right": {4, 8, 12, 16}, "left": {28, 32, 36, 40}, "across": set(range(4, 41, 4))}
    for direction in ("right", "left"):
        starts, across = set(), set()
        for seed in range(100):
            video = render_video(Scene((ShapeSpec("red", "square", direction),), "gray"), seed=seed, position_grid=4)
            corners = top_left_corners(video, "red")
            starts.add(int(corners[0, 0]))
            across.add(int(corners[0, 1]))
            assert (np.abs(np.diff(corners[:, 0])) == 3).all() and (corners[:, 1] == corners[0, 1]).all()
        assert starts == expected[direction]
        assert across == expected["across"]
    # Two shapes crossing at right angles still start on the grid (and keep apart).
    for seed in range(20):
        scene = Scene((ShapeSpec("red", "square", "left"), ShapeSpec("blue", "square", "down")), "gray")
        video = render_video(scene, seed=seed, position_grid=4)
        for color in scene.colors:
            assert (top_left_corners(video, color)[0] % 4 == 0).all()
            counts = (video == np.array(COLORS[color])).all(axis=-1).sum(axis=(1, 2))
            assert (counts == 19 * 19).all()  # never covered by the other shape


def test_shape_size_sets_the_side_of_every_shape_and_a_shape_too_large_is_refused():
    # A square fills its box (side**2 pixels), a circle pi/4 of it, a triangle half of it.
    for shape, share in (("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)):
        scene = scene_from_caption(f"a red {shape} moving down on a gray background")
        video = render_video(scene, seed=1, shape_size=29)
        counts = (video == np.array(COLORS["red"])).all(axis=-1).sum(axis=(1, 2))
        assert (counts == counts[0]).all()
        assert counts[0] == pytest.approx(share * 29**2, rel=0.04)
        ys, xs = np.nonzero((video[0] == np.array(COLORS["red"])).all(axis=-1))
        assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (29, 29)
    default = render_video(scene, seed=1)
    assert np.array_equal(default, render_video(scene, seed=1, shape_size=19))  # 30% of 64 px
    for bad in (5, 61):
        with pytest.raises(ValueError, match="shape_size"):
            render_video(scene, shape_size=bad)


def test_position_grid_one_is_the_plain_world_and_a_bad_grid_is_refused():
    scene = scene_from_caption("a red triangle moving up on a black background")
    for seed in range(5):
        assert np.array_equal(render_video(scene, seed=seed, position_grid=1), render_video(scene, seed=seed))
    corners = {tuple(top_left_corners(render_video(scene, seed=seed), "red")[0]) for seed in range(30)}
    assert any(x % 4 or y % 4 for x, y in corners)  # without a grid, starts fall between grid points
    with pytest.raises(ValueError, match="position_grid"):
        render_video(scene, position_grid=0)
    pairs = make_dataset(6, seed=3, position_grid=4)
    for caption, video in pairs:
        first = scene_from_caption(caption).shapes[0]
        if first.shape == "square":  # a square's bounding box is its stencil's
            assert (top_left_corners(video, first.color)[0] % 4 == 0).all()


@pytest.mark.parametrize(
    "num_frames, nearest",
    [(10, "9 and 13"), (8, "5 and 9"), (11, "9 and 13"), (48, "45 and 49"), (0, "1"), (-3, "1")],
)
def test_invalid_num_frames_names_nearest_valid_counts(num_frames, nearest):
    scene = Scene((ShapeSpec("red", "circle", "left"),), "gray")
    with pytest.raises(ValueError, match=f"nearest valid counts? (is|are) {nearest}$"):
        render_video(scene, num_frames=num_frames)
    with pytest.raises(ValueError, match="4k\\+1"):
        make_dataset(2, seed=0, num_frames=num_frames)


# --- captions ---------------------------------------------------------------------------------


def test_caption_text():
    one = Scene((ShapeSpec("red", "circle", "left"),), "gray")
    assert one.caption() == "a red circle moving left on a gray background"
    two = Scene([ShapeSpec("red", "circle", "left"), ShapeSpec("blue", "square", "up")], "black")
    assert two.caption() == "a red circle moving left and a blue square moving up on a black background"


def test_captions_round_trip_and_use_only_vocabulary_words():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sample_scene(rng)
        caption = scene.caption()
        assert caption == caption.lower() and caption.split(" ") == caption.split()
        assert set(caption.split()) <= set(VOCABULARY)
        assert scene_from_caption(caption) == scene
    for caption, _ in make_dataset(20, seed=1):
        assert scene_from_caption(caption).caption() == caption


@pytest.mark.parametrize(
    "caption",
    [
        "a pink circle moving left on a gray background",  # unknown colour
        "a red hexagon moving left on a gray background",  # unknown shape
        "a red circle moving sideways on a gray background",  # unknown direction
        "a red circle moving left on a white background",  # unknown background
        "a red circle moving left",  # no background
        "a red circle moving left on a gray background please",  # trailing words
        "red circle moving left on a gray background",  # missing article
        "a red circle moving left and a blue square moving up and a green triangle moving down on a gray background",
        "",
    ],
)
def test_scene_from_caption_rejects_bad_captions(caption):
    with pytest.raises(ValueError):
        scene_from_caption(caption)


def test_sample_scene_respects_restrictions():
    rng = np.random.default_rng(2)
    scenes = [sample_scene(rng, two_shape_prob=1.0, colors=["red", "blue"], backgrounds=["black"]) for _ in range(50)]
    for scene in scenes:
        assert sorted(scene.colors) == ["blue", "red"] and scene.background == "black"
    only_red = [sample_scene(rng, two_shape_prob=1.0, colors=["red"]) for _ in range(20)]
    assert all(scene.colors == ("red",) for scene in only_red)
    with pytest.raises(ValueError):
        sample_scene(rng, colors=["pink"])
    singles = [sample_scene(rng, two_shape_prob=0.0) for _ in range(50)]
    assert all(len(scene.shapes) == 1 for scene in singles)


def test_evaluation_prompts():
    prompts = evaluation_prompts("red")
    assert evaluation_prompts("red") == prompts
    assert len(prompts) == len(COLORS) * len(SHAPES) * len(DIRECTIONS)
    assert len({item["prompt"] for item in prompts}) == len(prompts)
    assert len({item["seed"] for item in prompts}) == len(prompts)
    for item in prompts:
        scene = scene_from_caption(item["prompt"])
        assert scene.shapes == (ShapeSpec(item["color"], item["shape"], item["direction"]),)
        assert item["is_target"] == (item["color"] == "red")
    assert {(item["color"], item["shape"], item["direction"]) for item in prompts} == set(
        itertools.product(COLORS, SHAPES, DIRECTIONS)
    )

    quick = evaluation_prompts("blue", quick=True)
    assert evaluation_prompts("blue", quick=True) == quick
    assert 12 <= len(quick) <= 16
    assert {item["color"] for item in quick} == set(COLORS)
    target = [item for item in quick if item["is_target"]]
    assert {item["color"] for item in target} == {"blue"} and len(target) >= 3
    full_blue = evaluation_prompts("blue")
    assert all(item in full_blue for item in quick)
    with pytest.raises(ValueError):
        evaluation_prompts("pink")


# --- classifier -----------------------------------------------------------------------------


def accuracy(predicted, expected):
    return sum(p == e for p, e in zip(predicted, expected)) / len(expected)


def test_classifier_labels_ground_truth(ground_truth_videos):
    labels = [classify_video(video) for _, video in ground_truth_videos]
    colors = [scene.shapes[0].color for scene, _ in ground_truth_videos]
    shapes = [scene.shapes[0].shape for scene, _ in ground_truth_videos]
    assert accuracy([label.color for label in labels], colors) >= 0.99
    assert accuracy([label.shape for label in labels], shapes) >= 0.95
    # Every single frame too, not only the majority vote.
    frame_colors = [frame.color for label in labels for frame in label.per_frame]
    assert accuracy(frame_colors, [c for c in colors for _ in range(9)]) >= 0.99


def test_classifier_reads_direction_background_and_size_of_ground_truth(ground_truth_videos):
    labels = [classify_video(video) for _, video in ground_truth_videos]
    scenes = [scene for scene, _ in ground_truth_videos]
    assert accuracy([label.direction for label in labels], [s.shapes[0].direction for s in scenes]) >= 0.99
    assert accuracy([label.background for label in labels], [s.background for s in scenes]) == 1.0
    for label, (scene, video) in zip(labels, ground_truth_videos):
        drawn = (video == np.array(COLORS[scene.shapes[0].color])).all(axis=-1).mean(axis=(1, 2))
        assert label.area == pytest.approx(float(np.median(drawn)), rel=0.1)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_classifier_on_degraded_videos(ground_truth_videos, name):
    rng = np.random.default_rng(42)
    cases = ground_truth_videos[::2]  # one video of every combination
    degraded = [DEGRADATIONS[name](video, rng) for _, video in cases]
    labels = [classify_video(video) for video in degraded]
    specs = [scene.shapes[0] for scene, _ in cases]
    assert accuracy([label.color for label in labels], [spec.color for spec in specs]) >= 0.95
    assert accuracy([label.shape for label in labels], [spec.shape for spec in specs]) >= 0.95
    assert accuracy([label.direction for label in labels], [spec.direction for spec in specs]) >= 0.95


def test_each_shape_of_a_two_shape_video_is_read_on_its_own():
    rng = np.random.default_rng(5)
    hits = total = 0
    for seed in range(60):
        scene = sample_scene(rng, two_shape_prob=1.0)
        clean = render_video(scene, seed=seed)
        for video in (clean, all_together(clean, rng)):
            for spec in scene.shapes:
                obj = describe_object(video, spec.color)
                hits += (obj.shape == spec.shape) + (obj.direction == spec.direction)
                total += 2
                assert obj.present == 1.0
            absent = next(c for c in COLORS if c not in scene.colors)
            assert describe_object(video, absent).present == 0.0
    assert hits / total >= 0.95


@pytest.mark.parametrize("radius", [0, 4, 6, 7, 9])
def test_fill_ratio_of_a_square_with_rounded_corners(radius):
    """A 24 px red square on gray, its corners rounded to ``radius``: the fill ratio is the drawn pixels over the
    24 x 24 box they span, and the shape is read as a square only while that stays above the boundary."""
    from receler.world.classify import CIRCLE_SQUARE_BOUNDARY, video_fill_ratio

    frame = np.full((64, 64, 3), BACKGROUNDS["gray"], dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    first, last, r = 20, 43, radius  # pixels 20..43: 24 px a side
    cv2.rectangle(mask, (first + r, first), (last - r, last), 1, thickness=-1)
    cv2.rectangle(mask, (first, first + r), (last, last - r), 1, thickness=-1)
    if r:
        for cy in (first + r, last - r):
            for cx in (first + r, last - r):
                cv2.circle(mask, (cx, cy), r, 1, thickness=-1)
    frame[mask == 1] = COLORS["red"]
    expected = mask.sum() / 24**2
    fill = video_fill_ratio(np.stack([frame] * 9))
    assert fill == pytest.approx(expected, abs=0.01)
    assert (classify_video(np.stack([frame] * 9)).shape == "square") == (expected >= CIRCLE_SQUARE_BOUNDARY)


def test_fill_ratios_of_ground_truth_shapes_sit_where_the_boundaries_expect(ground_truth_videos):
    from receler.world.classify import CIRCLE_SQUARE_BOUNDARY, TRIANGLE_CIRCLE_BOUNDARY, video_fill_ratio

    for scene, video in ground_truth_videos[:48]:
        fill = video_fill_ratio(video)
        shape = scene.shapes[0].shape
        low, high = {"square": (CIRCLE_SQUARE_BOUNDARY, 1.0), "circle": (TRIANGLE_CIRCLE_BOUNDARY, CIRCLE_SQUARE_BOUNDARY),
                     "triangle": (0.45, 0.7)}[shape]
        assert low <= fill <= high, (shape, fill)
    assert video_fill_ratio(np.full((9, 64, 64, 3), 128, dtype=np.uint8)) is None  # nothing drawn


def test_a_shape_that_does_not_move_has_no_direction():
    still = np.stack([render_video(Scene((ShapeSpec("red", "square", "left"),), "gray"), seed=2)[0]] * 9)
    label = classify_video(still)
    assert label.direction is None and label.shape == "square" and label.color == "red"


def test_video_shows_color_in_two_shape_videos():
    rng = np.random.default_rng(8)
    for seed in range(40):
        scene = sample_scene(rng, two_shape_prob=1.0)
        clean = render_video(scene, seed=seed)
        for video in (clean, all_together(clean, rng)):
            for color in COLORS:
                assert video_shows_color(video, color) == (color in scene.colors), (scene.caption(), color)


def test_frame_color_fractions():
    scene = Scene((ShapeSpec("yellow", "triangle", "right"),), "black")
    frame = render_video(scene, seed=1)[0]
    fractions = frame_color_fractions(frame)
    assert set(fractions) == set(COLORS)
    assert fractions["yellow"] > 0.9
    assert sum(value for name, value in fractions.items() if name != "yellow") < 0.05
    assert sum(fractions.values()) <= 1.0 + 1e-9


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_blank_frames_have_no_colour(background):
    rng = np.random.default_rng(0)
    blank = np.full((9, 64, 64, 3), BACKGROUNDS[background], dtype=np.uint8)
    for video in (blank, add_noise(blank, rng, sigma=20.0), all_together(blank, rng)):
        label = classify_frame(video[0])
        assert label.color is None and label.shape is None and label.foreground_fraction < 0.005
        assert classify_video(video).color is None
        assert not any(video_shows_color(video, color) for color in COLORS)
        assert all(value == 0.0 for value in frame_color_fractions(video[0]).values())


def test_classifier_rejects_bad_input():
    with pytest.raises(ValueError):
        classify_frame(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        classify_frame(np.zeros((3, 64, 64), dtype=np.uint8))
    with pytest.raises(ValueError):
        video_shows_color(np.zeros((9, 64, 64, 3), dtype=np.uint8), "pink")
