"""The world benchmark's targets, its held-out split, and what it measures (on hand-made videos whose answer is
known: the ground truth comes from how each video was drawn, never from the code under test)."""

import numpy as np
import pytest

from receler.world.measure import measure
from receler.world.scenes import BACKGROUNDS, COLORS, DIRECTIONS, Scene, ShapeSpec, render_video, shape_mask
from receler.world.targets import anchor_items, combinations, evaluation_items, parse_target, training_pairs

TARGETS = ["red", "blue", "triangle", "left", "red triangle"]


@pytest.mark.parametrize("text, kind", [("red", "color"), ("triangle", "shape"), ("left", "direction"),
                                        ("moving left", "direction"), ("red triangle", "combination")])
def test_target_kinds(text, kind):
    target = parse_target(text)
    assert target.kind == kind
    assert parse_target(text, kind=kind) == target


@pytest.mark.parametrize("text", ["pink", "red blue", "", "moving", "red circle square"])
def test_bad_targets_are_refused(text):
    with pytest.raises(ValueError):
        parse_target(text)
    with pytest.raises(ValueError, match="not a shape"):
        parse_target("red", kind="shape")


@pytest.mark.parametrize("text", TARGETS)
@pytest.mark.parametrize("quick", [False, True])
def test_held_out_groups_are_never_training_captions(text, quick):
    target = parse_target(text)
    train = {prompt for prompt, _ in training_pairs(target)}
    items = evaluation_items(target, quick=quick)
    held_out = {it["prompt"] for it in items if it["group"] in ("unseen", "two_shape")}
    assert held_out and not (held_out & train)
    seen = {it["prompt"] for it in items if it["group"] == "seen"}
    assert seen and seen <= train
    # Every evaluation group covers both backgrounds; seeds never repeat.
    for group in ("seen", "unseen", "two_shape", "other"):
        assert {it["background"] for it in items if it["group"] == group} == set(BACKGROUNDS), group
    assert len({it["seed"] for it in items}) == len(items)


@pytest.mark.parametrize("text", ["red", "triangle", "left"])
def test_every_free_value_is_both_seen_and_held_out(text):
    target = parse_target(text)
    combos = combinations(target)
    for attribute in target.free:
        values = {c[attribute] for c in combos}
        assert {c[attribute] for c in combos if c["held_out"]} == values
        assert {c[attribute] for c in combos if not c["held_out"]} == values


def test_target_and_other_prompts_say_what_they_claim():
    target = parse_target("red triangle")
    for item in evaluation_items(target):
        words = item["prompt"].split()
        has_target = any(a == "red" and b == "triangle" for a, b in zip(words, words[1:]))
        assert item["is_target"] == has_target, item["prompt"]
        assert item["is_target"] == (item["group"] != "other")
    for prompt, preserve in training_pairs(target):
        assert "red triangle" in prompt and "red triangle" not in preserve


# --- measurement on hand-made videos ------------------------------------------------------------


def draw(color, shape, direction, background="gray", side=19, frames=9, size=64, start=(20, 20), speed=3):
    """One shape moving ``speed`` px per frame, drawn with numpy (independent of the world's renderer)."""
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUNDS[background]
    dx, dy = DIRECTIONS[direction]
    stencil = shape_mask(shape, side)
    for f in range(frames):
        x, y = start[0] + dx * speed * f, start[1] + dy * speed * f
        video[f, y : y + side, x : x + side][stencil] = COLORS[color]
    return video


def start_for(direction):
    """A start that keeps a path of 24 px inside the 64 px frame for shapes up to 27 px."""
    return tuple(32 if step < 0 else 4 if step > 0 else 18 for step in DIRECTIONS[direction])


def test_a_recoloured_larger_square_counts_as_substitution_not_as_erasure():
    target = parse_target("red")
    items = [it for it in evaluation_items(target) if it["group"] in ("seen", "unseen")]
    clean, erased = [], []
    for it in items:
        spec = dict(color=it["color"], shape=it["shape"], direction=it["direction"], background=it["background"])
        clean.append(draw(**spec, start=start_for(it["direction"])))
        # The "erased" render: the same shape drawn blue with twice the area (27^2 / 19^2 = 2.02).
        erased.append(draw(**{**spec, "color": "blue"}, side=27, start=start_for(it["direction"])))
    result = measure(clean, erased, items, target)
    assert result["target_shown"]["clean"]["seen"] == 1.0 and result["target_shown"]["clean"]["unseen"] == 1.0
    assert result["target_shown"]["erased"]["all"] == 0.0  # red is gone ...
    assert result["substitution"]["top"] == "blue"  # ... because everything turned blue
    assert result["substitution"]["share"] == 1.0
    assert result["substitution"]["histogram"] == {"blue": len(items)}
    assert result["rest_of_prompt"]["area_ratio"] == pytest.approx(27**2 / 19**2, rel=0.05)
    assert result["rest_of_prompt"]["shape"] == 1.0 and result["rest_of_prompt"]["direction"] == 1.0
    assert result["rest_of_prompt"]["background"] == 1.0


def test_an_anchored_eraser_is_scored_on_drawing_what_its_anchor_draws():
    target = parse_target("red")
    items = evaluation_items(target)
    anchors = anchor_items(items, target)
    singles = [i for i, it in enumerate(items) if it["group"] in ("seen", "unseen")]
    assert [a["index"] for a in anchors] == singles
    singles = singles[::3]  # a third of them, both groups and backgrounds, keeps the test short
    for a in anchors:  # the item's own caption and seed, with the colour word taken out
        assert a["prompt"] == items[a["index"]]["prompt"].replace("a red ", "a ") and a["seed"] == items[a["index"]]["seed"]
    # Anchors drawn in turn blue, green, yellow; the eraser draws blue everywhere, except that it draws nothing
    # for every fifth prompt: it follows its anchor on the blue ones and the empty ones.
    colours = ["blue", "green", "yellow"]
    clean, erased, anchor_videos = [], [], {}
    for k, i in enumerate(singles):
        it = items[i]
        spec = dict(shape=it["shape"], direction=it["direction"], background=it["background"],
                    start=start_for(it["direction"]))
        clean.append(draw("red", **spec))
        anchor_videos[i] = draw(colours[k % 3], **spec)
        erased.append(clean[-1] * 0 + np.array(BACKGROUNDS[it["background"]], np.uint8) if k % 5 == 0
                      else draw("blue", **spec))
    expected = np.mean([k % 5 == 0 or k % 3 == 0 for k in range(len(singles))])
    single_items = [items[i] for i in singles]
    remap = {j: anchor_videos[i] for j, i in enumerate(singles)}
    result = measure(clean, erased, single_items, target, anchors=remap)
    assert result["substitution"]["anchor_follow"] == pytest.approx(expected)
    assert "anchor_follow" not in measure(clean, erased, single_items, target)["substitution"]


def test_erasing_to_nothing_is_not_survival_and_other_classes_are_scored_each():
    target = parse_target("red")
    items = evaluation_items(target, quick=True)
    clean, erased = [], []
    for it in items:
        scene = Scene(tuple(ShapeSpec(s["color"], s["shape"], s["direction"]) for s in it["shapes"]), it["background"])
        video = render_video(scene, seed=it["seed"])
        clean.append(video)
        if it["group"] == "other" and it["class"] == "green":
            # The eraser broke green: those shapes come out blank.
            erased.append(np.broadcast_to(np.array(BACKGROUNDS[it["background"]], np.uint8), video.shape).copy())
        elif it["is_target"]:
            blank = video.copy()
            red = (video == COLORS["red"]).all(axis=-1)
            blank[red] = BACKGROUNDS[it["background"]]  # the red shape removed, anything else kept
            erased.append(blank)
        else:
            erased.append(video)
    result = measure(clean, erased, items, target)
    assert result["target_shown"]["clean"]["all"] == 1.0
    assert result["target_shown"]["erased"]["all"] == 0.0
    assert result["substitution"]["histogram"] == {"none": 8}  # nothing drew a substitute colour ...
    assert result["substitution"]["share"] == 0.0
    assert result["rest_of_prompt"]["shape"] == 0.0  # ... but the shape did not survive either
    assert result["two_shape_other_kept"] == {"clean": 1.0, "erased": 1.0}
    accuracy = result["other_accuracy"]["erased"]
    assert accuracy["per_class"]["green"] == 0.0 and accuracy["worst_class"] == "green"
    assert all(accuracy["per_class"][c] == 1.0 for c in ("yellow", "cyan", "blue", "purple"))
    assert accuracy["mean"] == pytest.approx(0.8)
    assert result["other_accuracy"]["clean"]["worst"] == 1.0
    assert result["other_psnr"]["worst_class"] == "green"
    assert result["other_psnr"]["per_class"]["yellow"] == 100.0  # identical frames count as 100 dB


@pytest.mark.parametrize("text", ["red", "triangle", "left", "red triangle"])
def test_two_shape_scenes_tell_the_target_from_the_other_shape(text):
    target = parse_target(text)
    items = [it for it in evaluation_items(target) if it["group"] == "two_shape"]
    clean, erased = [], []
    for it in items:
        specs = tuple(ShapeSpec(s["color"], s["shape"], s["direction"]) for s in it["shapes"])
        video = render_video(Scene(specs, it["background"]), seed=it["seed"])
        target_color = next(s["color"] for s in it["shapes"] if s["is_target"])
        removed = video.copy()
        removed[(video == COLORS[target_color]).all(axis=-1)] = BACKGROUNDS[it["background"]]
        clean.append(video)
        erased.append(removed)
    result = measure(clean, erased, items, target)
    assert result["target_shown"]["clean"]["two_shape"] == 1.0
    assert result["target_shown"]["erased"]["two_shape"] == 0.0
    assert result["two_shape_other_kept"] == {"clean": 1.0, "erased": 1.0}


@pytest.mark.parametrize("text", TARGETS)
def test_anchors_leave_exactly_the_target_unsaid(text, tmp_path):
    import csv

    from receler.world.files import write_prompt_files
    from receler.world.targets import training_rows

    target = parse_target(text)
    for row in training_rows(target):
        prompt, anchor = row["prompt"].split(), row["anchor_prompt"].split()
        for _, value in target.fixed:
            assert value in prompt and value not in anchor
        kept = [w for w in prompt if w not in {v for _, v in target.fixed} | {"moving"}]
        assert [w for w in anchor if w not in ("shape", "moving")] == kept
    train, _ = write_prompt_files(tmp_path, target)
    assert csv.DictReader(open(train)).fieldnames == ["prompt", "preserve_prompt"]
    train, _ = write_prompt_files(tmp_path, target, anchors=True)
    assert csv.DictReader(open(train)).fieldnames == ["prompt", "preserve_prompt", "anchor_prompt"]


@pytest.mark.parametrize("text, value", [("red", "blue"), ("triangle", "square"), ("left", "up")])
def test_a_named_anchor_puts_its_value_in_the_targets_place(text, value, tmp_path):
    import csv

    from receler.world.files import write_prompt_files
    from receler.world.targets import training_rows

    target = parse_target(text)
    for row in training_rows(target, anchor_to=value):
        assert row["anchor_prompt"] == row["prompt"].replace(f" {text} ", f" {value} ")
    items = evaluation_items(target, quick=True)
    for a in anchor_items(items, target, anchor_to=value):
        assert a["prompt"] == items[a["index"]]["prompt"].replace(f" {text} ", f" {value} ")
        assert a["seed"] == items[a["index"]]["seed"]
    train, _ = write_prompt_files(tmp_path, target, anchor_to=value)  # a named anchor needs no --anchors
    rows = list(csv.DictReader(open(train)))
    assert rows and all(r["anchor_prompt"].split().count(value) == 1 for r in rows)


@pytest.mark.parametrize("text, value, why", [
    ("red triangle", "blue", "fixes several attributes"),  # which attribute would it replace?
    ("red", "square", "not a color"),
    ("red", "red", "being erased"),
    ("red+green", "green", "being erased"),
])
def test_a_named_anchor_that_cannot_stand_in_for_the_target_is_refused(text, value, why):
    from receler.world.targets import check_anchor_to, parse_targets

    with pytest.raises(ValueError, match=why):
        check_anchor_to(parse_targets(text), value)
    check_anchor_to(parse_targets("red+green"), "blue")  # another colour is fine


def test_several_targets_are_measured_each_on_its_own_prompts():
    from receler.world.measure import measure_multi
    from receler.world.targets import multi_training_rows, parse_targets

    multi = parse_targets("red+green")
    with pytest.raises(ValueError):
        parse_targets("red+triangle")  # one kind at a time
    items = evaluation_items(multi, quick=True)
    assert {it.get("component") for it in items if it["group"] != "other"} == {"red", "green"}
    # No prompt pairs a target with the other erased colour, and the other prompts avoid both.
    for it in items:
        colors = {s["color"] for s in it["shapes"]}
        assert not {"red", "green"} <= colors
        if it["group"] == "other":
            assert not colors & {"red", "green"}
    assert {row["concept"] for row in multi_training_rows(multi)} == {"red", "green"}
    assert not any("green" in row["preserve_prompt"] or "red" in row["preserve_prompt"]
                   for row in multi_training_rows(multi))

    clean, erased = [], []
    for it in items:
        specs = tuple(ShapeSpec(s["color"], s["shape"], s["direction"]) for s in it["shapes"])
        video = render_video(Scene(specs, it["background"]), seed=it["seed"])
        clean.append(video)
        kept = video.copy()
        if it.get("component") == "red":  # only red is removed: green still shows
            kept[(video == COLORS["red"]).all(axis=-1)] = BACKGROUNDS[it["background"]]
        erased.append(kept)
    row = measure_multi(clean, erased, items, multi)
    assert row["components"]["red"]["target_shown"]["erased"]["seen"] == 0.0
    assert row["components"]["green"]["target_shown"]["erased"]["seen"] == 1.0
    assert row["target_shown"]["erased"]["seen"] == 1.0  # the row reports the worst concept
    assert row["other_accuracy"]["erased"]["worst"] == 1.0
