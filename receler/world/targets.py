"""What the world benchmark erases, and which prompts train and test an eraser for it.

A :class:`Target` fixes one or more attributes of a shape: a colour (``red``), a shape (``triangle``),
a direction (``left``, i.e. "moving left") or a combination (``red triangle``). The attributes it leaves
free (for a colour: shape, direction, background) form *combinations*; a fixed rule holds about a third
of them out. An eraser trains on target captions of the *seen* combinations only, and is evaluated on

- ``seen``: the training captions, rendered with seeds training never used;
- ``unseen``: target captions of the held-out combinations (never training captions);
- ``two_shape``: the target shape beside a shape of another value (is the target removed and the
  other kept?), never training captions either;
- ``other``: single shapes of every other value of the target's kind (the other colours, shapes or
  directions), over seen and unseen combinations, for what the eraser must leave alone;

each on both backgrounds. Items are plain dicts, so they go to CSV and JSON unchanged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .scenes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, Scene, ShapeSpec

# The attributes of one shape in a caption, and their vocabularies, in caption order.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "direction": tuple(DIRECTIONS),
    "background": tuple(BACKGROUNDS),
}
KINDS = ("color", "shape", "direction", "combination")
# A combination whose index sum is a multiple of this is held out (about a third of them).
HOLDOUT_MODULUS = 3
# Seeds of evaluation renders start here, far from the small seeds training and tests use.
EVAL_SEED_BASE = 10_000


@dataclass(frozen=True)
class Target:
    """The concept to erase: fixed values of some shape attributes (``{"color": "red"}``, ...)."""

    fixed: tuple[tuple[str, str], ...]  # ((attribute, value), ...) in caption order

    @property
    def attributes(self) -> dict:
        return dict(self.fixed)

    @property
    def kind(self) -> str:
        return self.fixed[0][0] if len(self.fixed) == 1 else "combination"

    @property
    def name(self) -> str:
        """As it is written in captions, e.g. ``red``, ``triangle``, ``left``, ``red triangle``."""
        return " ".join(value for _, value in self.fixed)

    @property
    def label(self) -> str:
        """For tables: directions read "moving left"."""
        return " ".join(f"moving {v}" if a == "direction" else v for a, v in self.fixed)

    @property
    def free(self) -> tuple[str, ...]:
        """The attributes the target leaves free (the background is always free)."""
        fixed = self.attributes
        return tuple(a for a in ATTRIBUTES if a not in fixed)

    @property
    def measured(self) -> str:
        """The attribute whose accuracy on other prompts the benchmark reports per class."""
        return self.fixed[0][0]

    def matches(self, spec: ShapeSpec) -> bool:
        return all(getattr(spec, a) == v for a, v in self.fixed)

    def others(self, attribute: str) -> list:
        """The values of a fixed attribute other than the target's."""
        return [v for v in ATTRIBUTES[attribute] if v != self.attributes[attribute]]


def parse_target(text: str, kind: str | None = None) -> Target:
    """``"red"`` -> colour, ``"triangle"`` -> shape, ``"left"``/``"moving left"`` -> direction,
    ``"red triangle"`` -> combination; ``kind`` (when given) must agree."""
    words = [w for w in text.lower().replace(",", " ").split() if w != "moving"]
    fixed = {}
    for word in words:
        attribute = next((a for a in ("color", "shape", "direction") if word in ATTRIBUTES[a]), None)
        if attribute is None or attribute in fixed:
            known = ", ".join(v for a in ("color", "shape", "direction") for v in ATTRIBUTES[a])
            raise ValueError(f"cannot read target {text!r}: {word!r} is not a colour, shape or direction of the "
                             f"world (one of each at most; known words: {known})")
        fixed[attribute] = word
    if not fixed:
        raise ValueError(f"target {text!r} names no colour, shape or direction")
    target = Target(tuple((a, fixed[a]) for a in ("color", "shape", "direction") if a in fixed))
    if kind is not None and kind != target.kind:
        raise ValueError(f"target {text!r} is a {target.kind} target, not a {kind} one (--target_kind)")
    return target


def combinations(target: Target) -> list[dict]:
    """Every assignment of the target's free attributes, each marked ``held_out`` or not.

    A combination is held out when the sum of its values' indices is a multiple of ``HOLDOUT_MODULUS``:
    a fixed rule (the same split for every seed) under which every free value is seen and held out.
    """
    free = target.free
    out = []
    for values in itertools.product(*(ATTRIBUTES[a] for a in free)):
        index_sum = sum(ATTRIBUTES[a].index(v) for a, v in zip(free, values))
        out.append({**dict(zip(free, values)), "held_out": index_sum % HOLDOUT_MODULUS == 0})
    return out


def _spec(values: dict) -> ShapeSpec:
    return ShapeSpec(values["color"], values["shape"], values["direction"])


def _caption(specs, background) -> str:
    return Scene(tuple(specs), background).caption()


def target_caption(target: Target, combination: dict) -> str:
    values = {**combination, **target.attributes}
    return _caption([_spec(values)], values["background"])


def substitute(target: Target, combination: dict, k: int, avoid: tuple = ()) -> dict:
    """The shape of ``combination`` with the target's value(s) replaced, cycling with ``k`` over the values not in
    ``avoid``: for a combination target one fixed attribute changes at a time (red triangle -> red circle, blue
    triangle)."""
    attribute = target.fixed[k % len(target.fixed)][0]
    others = [v for v in target.others(attribute) if v not in avoid]
    values = {**combination, **target.attributes}
    values[attribute] = others[(k // len(target.fixed)) % len(others)]
    return values


def training_pairs(target: Target) -> list[tuple[str, str]]:
    """``(prompt, preserve_prompt)`` for every seen combination: the target caption, and the same scene
    with the target replaced by another value."""
    return [(row["prompt"], row["preserve_prompt"]) for row in training_rows(target)]


def check_anchor_to(target, value: str) -> None:
    """Refuse a named anchor value (``--anchor_to``) that cannot stand in for ``target`` (or for each concept of a
    :class:`MultiTarget`): it must be another value of the target's own kind."""
    for component in getattr(target, "components", (target,)):
        if component.kind == "combination":
            raise ValueError(f"--anchor_to names one value, but {component.name!r} fixes several attributes; "
                             "use --anchors (the caption with the target unsaid) for a combination target")
        values = ATTRIBUTES[component.kind]
        if value not in values:
            raise ValueError(f"--anchor_to {value!r} is not a {component.kind} of the world; choose one of "
                             f"{', '.join(values)}")
        if value == component.name:
            raise ValueError(f"--anchor_to {value!r} is a concept being erased; name another {component.kind}")


def _anchor_caption(values: dict, target: Target, to: str | None = None) -> str:
    """The single-shape caption of ``values`` (with the target's values) with the target's words left unsaid, or,
    with ``to``, with the target's value replaced by ``to`` (``a blue circle ...`` for red)."""
    values = {**values, **target.attributes}
    if to is not None:
        values[target.kind] = to
        return _caption([_spec(values)], values["background"])
    return Scene((_spec(values),), values["background"]).caption(omit=tuple(target.attributes))


def training_rows(target: Target, avoid: tuple = (), anchor_to: str | None = None) -> list[dict]:
    """The training CSV's rows for every seen combination: the target caption, its preserve prompt (the same
    scene with another value), and its anchor (the same caption with the target's words left unsaid, e.g.
    ``a circle moving left on a gray background`` for red: the world model draws it in a random colour; or, with
    ``anchor_to``, with that value instead of the target's: ``a blue circle ...``)."""
    seen = [c for c in combinations(target) if not c["held_out"]]
    rows = []
    for k, combination in enumerate(seen):
        other = substitute(target, combination, k, avoid)
        rows.append({
            "prompt": target_caption(target, combination),
            "preserve_prompt": _caption([_spec(other)], other["background"]),
            "anchor_prompt": _anchor_caption(combination, target, anchor_to),
        })
    return rows


def anchor_items(items: list, target: Target, anchor_to: str | None = None) -> list[dict]:
    """For each single-shape target item (``seen`` / ``unseen``), its anchor: the same scene and seed with the
    target's words left unsaid (or replaced by ``anchor_to``), as the benchmark's anchored erasers are trained to
    draw instead."""
    return [{"prompt": _anchor_caption(it, target, anchor_to), "seed": it["seed"], "index": i}
            for i, it in enumerate(items) if it["group"] in ("seen", "unseen")]


def _item(specs: list, background: str, group: str, target: Target, seed: int, cls: str) -> dict:
    first = specs[0]
    return {
        "prompt": _caption(specs, background),
        "seed": seed,
        "group": group,
        "background": background,
        "color": first.color,
        "shape": first.shape,
        "direction": first.direction,
        "is_target": any(target.matches(s) for s in specs),
        # Other prompts report their accuracy per class: the value(s) they have instead of the target's.
        "class": cls,
        "shapes": [{"color": s.color, "shape": s.shape, "direction": s.direction, "is_target": target.matches(s)}
                   for s in specs],
    }


def _spread(pool: list, count: int) -> list:
    """``count`` combinations evenly spaced over ``pool``, half on each background (all when not fewer)."""
    if count >= len(pool):
        return list(pool)
    chosen = []
    names = ATTRIBUTES["background"]
    for b, background in enumerate(names):
        part = [c for c in pool if c["background"] == background]
        share = count // len(names) + (b < count % len(names))
        chosen += [part[int(i * len(part) / share)] for i in range(min(share, len(part)))]
    return chosen


def evaluation_items(target, quick: bool = False, avoid: tuple = ()) -> list[dict]:
    """The benchmark's prompts for ``target``: seen, unseen, two-shape and other groups (see module doc).

    ``quick`` keeps a few of each group (both backgrounds, every other class) for CI. Seeds are
    ``EVAL_SEED_BASE`` + the item's position. ``avoid``: values of the target's attribute that no other shape
    may take (the other concepts of a :class:`MultiTarget`, erased too). A :class:`MultiTarget` gets each of its
    targets' seen, unseen and two-shape prompts (marked with their ``component``) and one shared other group.
    """
    if isinstance(target, MultiTarget):
        return _multi_items(target, quick)
    combos = combinations(target)
    seen = [c for c in combos if not c["held_out"]]
    unseen = [c for c in combos if c["held_out"]]
    items = []

    def add(specs, background, group, cls):
        items.append(_item(specs, background, group, target, EVAL_SEED_BASE + len(items), cls))

    for group, pool in (("seen", seen), ("unseen", unseen)):
        for combination in _spread(pool, 4) if quick else pool:
            add([_spec({**combination, **target.attributes})], combination["background"], group, target.name)

    # Two shapes: the target beside a shape of another colour (the classifier tells the two apart by
    # colour), which for a shape or direction target also differs in that attribute; the target comes
    # first in half of them.
    for k, combination in enumerate(_spread(unseen + seen, 4 if quick else 12)):
        first = {**combination, **target.attributes}
        second = dict(first)
        colors = [c for c in ATTRIBUTES["color"] if c == first["color"] or c not in avoid]
        second["color"] = colors[(colors.index(first["color"]) + 1 + k % (len(colors) - 1)) % len(colors)]
        for attribute in ("shape", "direction"):
            names = ATTRIBUTES[attribute]
            if attribute not in target.attributes:
                second[attribute] = names[(names.index(first[attribute]) + 1 + k) % len(names)]
            elif target.kind != "combination":
                second[attribute] = target.others(attribute)[k % len(target.others(attribute))]
        specs = [_spec(first), _spec(second)]
        add(specs[::-1] if k % 2 else specs, combination["background"], "two_shape", target.name)

    # Other prompts: each fixed attribute set to each of its other values (for "red triangle": the red
    # circles and squares, and the triangles of every other colour), over seen and unseen combinations.
    for attribute, _ in target.fixed:
        for value in (v for v in target.others(attribute) if v not in avoid):
            values = {**target.attributes, attribute: value}
            cls = " ".join(values[a] for a, _ in target.fixed)
            for combination in _spread(combos, 2 if quick else 8):
                add([_spec({**combination, **values})], combination["background"], "other", cls)
    return items


@dataclass(frozen=True)
class MultiTarget:
    """Several concepts erased together (``red+green+blue``): one eraser for all of them, or a stack of one eraser
    each. Its targets are of one kind (colours), so the other prompts are the values none of them has."""

    components: tuple  # of Target

    @property
    def name(self) -> str:
        return "+".join(t.name for t in self.components)

    @property
    def label(self) -> str:
        return " + ".join(t.label for t in self.components)

    @property
    def kind(self) -> str:
        return "multi"


def parse_targets(text: str, kind: str | None = None):
    """A :class:`Target`, or a :class:`MultiTarget` for ``a+b+...`` (targets of one single-attribute kind)."""
    if "+" not in text:
        return parse_target(text, kind)
    components = tuple(parse_target(part, kind) for part in text.split("+") if part.strip())
    kinds = {t.kind for t in components}
    if len(components) < 2 or len(kinds) != 1 or "combination" in kinds:
        raise ValueError(f"cannot read {text!r} as several targets: give two or more colours (or shapes, or "
                         f"directions) joined by '+', e.g. red+green+blue")
    if len({t.name for t in components}) != len(components):
        raise ValueError(f"{text!r} names a target twice")
    return MultiTarget(components)


def _multi_items(multi: MultiTarget, quick: bool) -> list[dict]:
    items = []
    for target in multi.components:
        avoid = tuple(t.name for t in multi.components if t is not target)
        for it in evaluation_items(target, quick, avoid):
            if it["group"] == "other" and target is not multi.components[0]:
                continue  # the other prompts are the same for every component: keep one set
            if it["group"] != "other":
                it["component"] = target.name
            items.append({**it, "seed": EVAL_SEED_BASE + len(items),
                          "is_target": any(t.matches(_spec(sh)) for sh in it["shapes"] for t in multi.components)})
    return items


def multi_training_rows(multi: MultiTarget, anchor_to: str | None = None) -> list[dict]:
    """Every component's training rows, each with its ``concept``: one eraser learns all of them."""
    rows = []
    for target in multi.components:
        avoid = tuple(t.name for t in multi.components if t is not target)  # never preserve another erased concept
        rows += [{**row, "concept": target.name} for row in training_rows(target, avoid, anchor_to)]
    return rows


def prompt_rows(items: list) -> list[dict]:
    """The CSV columns of evaluation items (the per-shape details stay in JSON)."""
    return [{k: it[k] for k in ("prompt", "seed", "group", "background", "color", "is_target", "class")}
            for it in items]
