"""What an eraser did on the world model: is the concept gone, what replaced it, and did the rest survive.

Every number is read from pixels by the world's classifier (:mod:`receler.world.classify`), comparing the
clean and the erased render of the same prompt and seed:

- **target shown**: the share of target renders (single shapes: ``seen`` / ``unseen`` groups; ``two_shape``)
  in which an object with the target's attributes is still visible, per group and per background;
- **substitution**: what the classifier sees where the target was (the histogram of the main object's value
  of the target's attribute(s) in erased target renders) and the share of the most common substitute.
  An eraser that turns every red circle blue erases "red" by the first measure and fails this one. For an
  eraser trained with anchors, ``anchor_follow``: the share that shows what the clean model draws for the
  anchor prompt (the caption with the target unsaid, same seed) in the target's attribute, or nothing there;
- **rest of the prompt**: in erased target renders, whether the attributes the target does not fix (shape,
  direction, background, colour) agree with the clean render, and the area ratio erased / clean of the
  main object (a larger blob in another colour is not an erased concept);
- **two shapes**: whether the other, non-target shape is kept;
- **others**: on prompts without the target, accuracy of the target's attribute(s) per class (e.g. per
  other colour) and per class and background, the mean and the worst, and PSNR clean vs erased per class.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .classify import COLOR_NAMES, classify_video, describe_object, video_shows_color
from .targets import Target

GROUPS = ("seen", "unseen", "two_shape")
NONE = "none"  # histogram label when the classifier sees nothing (or no value) there


def video_psnr(a: np.ndarray, b: np.ndarray) -> float:
    from evaluation.metrics import video_psnr_ssim

    return float(video_psnr_ssim(a, b)["psnr"])


def read_video(video: np.ndarray) -> dict:
    """The classifier's reading: the main (largest) object and every coloured object shown."""
    label = classify_video(video)
    main = {"color": label.color, "shape": label.shape, "direction": label.direction, "background": label.background,
            "area": label.area}
    objects = []
    for color in COLOR_NAMES:
        if video_shows_color(video, color):
            obj = describe_object(video, color)
            objects.append({"color": color, "shape": obj.shape, "direction": obj.direction, "area": obj.area})
    return {"main": main, "objects": objects}


def shows_target(reading: dict, target: Target) -> bool:
    """An object with every attribute the target fixes (for a colour: that colour is shown)."""
    return any(all(obj.get(a) == v for a, v in target.fixed) for obj in reading["objects"])


def target_value(reading: dict, target: Target) -> str:
    """The main object's value(s) of the target's attribute(s), e.g. ``blue`` or ``red circle``."""
    values = [reading["main"].get(a) for a, _ in target.fixed]
    return NONE if any(v is None for v in values) else " ".join(values)


def other_kept(reading: dict, spec: dict, target: Target) -> bool:
    """The non-target shape of a two-shape prompt is there: an object of its colour whose attributes of
    the target's kind match the prompt."""
    for obj in reading["objects"]:
        if obj["color"] == spec["color"] and all(obj.get(a) == spec[a] for a, _ in target.fixed if a != "color"):
            return True
    return False


def _rate(flags) -> float | None:
    flags = list(flags)
    return float(np.mean(flags)) if flags else None


def _by(items, key) -> dict:
    out = {}
    for i, item in enumerate(items):
        out.setdefault(item[key], []).append(i)
    return out


def measure(clean: list, erased: list, items: list, target: Target, anchors: dict | None = None) -> dict:
    """Every metric of the module docstring for one clean/erased rendering of ``items``.

    ``anchors`` (``{item index: clean render of its anchor prompt}``, for erasers trained with anchors) adds
    ``substitution.anchor_follow``: the share of single-shape target renders that show what the anchor shows
    in the target's attribute, or nothing there."""
    if not (len(clean) == len(erased) == len(items)):
        raise ValueError(f"got {len(clean)} clean and {len(erased)} erased videos for {len(items)} prompts")
    read_clean = [read_video(v) for v in clean]
    read_erased = [read_video(v) for v in erased]
    result = {"target": target.name, "target_kind": target.kind, "num_prompts": len(items)}

    # Target shown, per group and per background of the target groups.
    shown = {}
    for side, readings in (("clean", read_clean), ("erased", read_erased)):
        per_group = {}
        for group in GROUPS:
            idx = [i for i, it in enumerate(items) if it["group"] == group]
            per_group[group] = _rate(shows_target(readings[i], target) for i in idx)
            for background, members in _by([items[i] for i in idx], "background").items():
                per_group[f"{group}_{background}"] = _rate(shows_target(readings[idx[j]], target) for j in members)
        targets = [i for i, it in enumerate(items) if it["group"] in GROUPS]
        per_group["all"] = _rate(shows_target(readings[i], target) for i in targets)
        shown[side] = per_group
    result["target_shown"] = shown

    # Substitution and the rest of the prompt, on single-shape target renders.
    single = [i for i, it in enumerate(items) if it["group"] in ("seen", "unseen")]
    histogram = Counter(target_value(read_erased[i], target) for i in single)
    substitutes = {k: n for k, n in histogram.items() if k not in (NONE, target.name)}
    top = max(substitutes, key=substitutes.get) if substitutes else None
    result["substitution"] = {
        "histogram": dict(histogram.most_common()),
        "top": top,
        "share": substitutes[top] / len(single) if top else 0.0,
    }
    if anchors is not None:
        follows = [target_value(read_erased[i], target) in (NONE, target_value(read_video(anchors[i]), target))
                   for i in single if i in anchors]
        result["substitution"]["anchor_follow"] = _rate(follows)
    rest = {}
    for attribute in ("color", "shape", "direction", "background"):
        if attribute not in target.attributes:
            rest[attribute] = _rate(read_erased[i]["main"][attribute] == read_clean[i]["main"][attribute]
                                    for i in single)
    rest["all"] = _rate(all(read_erased[i]["main"][a] == read_clean[i]["main"][a] for a in rest)
                        for i in single)
    ratios = [read_erased[i]["main"]["area"] / read_clean[i]["main"]["area"]
              for i in single if read_clean[i]["main"]["area"] > 0]
    rest["area_ratio"] = float(np.median(ratios)) if ratios else None
    result["rest_of_prompt"] = rest

    # Two shapes: the other shape kept.
    pairs = [i for i, it in enumerate(items) if it["group"] == "two_shape"]
    result["two_shape_other_kept"] = {
        side: _rate(any(other_kept(readings[i], s, target) for s in items[i]["shapes"] if not s["is_target"])
                    for i in pairs)
        for side, readings in (("clean", read_clean), ("erased", read_erased))
    }

    # Other prompts: accuracy of the target's attribute(s) per class and background; PSNR per class.
    others = [i for i, it in enumerate(items) if it["group"] == "other"]

    def correct(reading, item):
        return all(reading["main"][a] == item[a] for a, _ in target.fixed)

    def whole_prompt(reading, item):
        return all(reading["main"][a] == item[a] for a in ("color", "shape", "direction", "background"))

    psnr = {i: video_psnr(clean[i], erased[i]) for i in others}
    accuracy = {}
    for side, readings in (("clean", read_clean), ("erased", read_erased)):
        per_class = {}
        for cls, members in _by([items[i] for i in others], "class").items():
            per_class[cls] = _rate(correct(readings[others[j]], items[others[j]]) for j in members)
        per_cell = {}
        for i in others:
            per_cell.setdefault((items[i]["class"], items[i]["background"]), []).append(correct(readings[i], items[i]))
        per_cell = {f"{cls}/{background}": _rate(v) for (cls, background), v in per_cell.items()}
        accuracy[side] = {
            "mean": _rate(correct(readings[i], items[i]) for i in others),
            "worst": min(per_class.values()) if per_class else None,
            "worst_class": min(per_class, key=per_class.get) if per_class else None,
            "worst_class_background": min(per_cell.values()) if per_cell else None,
            "per_class": per_class,
            "per_class_background": per_cell,
            "whole_prompt": _rate(whole_prompt(readings[i], items[i]) for i in others),
        }
    result["other_accuracy"] = accuracy
    per_class_psnr = {cls: float(np.mean([psnr[others[j]] for j in members]))
                      for cls, members in _by([items[i] for i in others], "class").items()}
    result["other_psnr"] = {
        "mean": float(np.mean(list(psnr.values()))) if psnr else None,
        "worst": min(per_class_psnr.values()) if per_class_psnr else None,
        "worst_class": min(per_class_psnr, key=per_class_psnr.get) if per_class_psnr else None,
        "per_class": per_class_psnr,
    }
    result["videos"] = [
        {"prompt": it["prompt"], "seed": it["seed"], "group": it["group"], "clean": read_clean[i]["main"],
         "erased": read_erased[i]["main"], **({"psnr": psnr[i]} if i in psnr else {})}
        for i, it in enumerate(items)
    ]
    return result


def measure_multi(clean: list, erased: list, items: list, multi) -> dict:
    """:func:`measure` for several concepts erased together: each concept measured on its own target prompts and
    the shared other prompts (``components``), and a row of the same fields where every target number is the
    worst concept's (most shown, largest substitution, least survived, area ratio farthest from 1)."""
    others = [i for i, it in enumerate(items) if it["group"] == "other"]
    parts = {}
    for target in multi.components:
        idx = [i for i, it in enumerate(items) if it.get("component") == target.name] + others
        parts[target.name] = measure([clean[i] for i in idx], [erased[i] for i in idx], [items[i] for i in idx],
                                     target)
    rows = list(parts.values())
    row = {key: rows[0][key] for key in ("other_accuracy", "other_psnr")}
    row["target"], row["target_kind"], row["num_prompts"] = multi.name, multi.kind, len(items)
    row["target_shown"] = {side: {g: max(r["target_shown"][side][g] for r in rows if r["target_shown"][side].get(g)
                                         is not None) for g in rows[0]["target_shown"][side]}
                           for side in ("clean", "erased")}
    worst_sub = max(rows, key=lambda r: r["substitution"]["share"])
    row["substitution"] = worst_sub["substitution"]
    rest = {}
    for key in rows[0]["rest_of_prompt"]:
        values = [r["rest_of_prompt"][key] for r in rows if r["rest_of_prompt"][key] is not None]
        if key == "area_ratio":
            rest[key] = max(values, key=lambda v: abs(np.log(max(v, 1e-9)))) if values else None
        else:
            rest[key] = min(values) if values else None
    row["rest_of_prompt"] = rest
    row["two_shape_other_kept"] = {side: min(r["two_shape_other_kept"][side] for r in rows) for side in ("clean", "erased")}
    row["components"] = {name: {k: r[k] for k in ("target_shown", "substitution", "rest_of_prompt",
                                                  "two_shape_other_kept")} for name, r in parts.items()}
    return row
