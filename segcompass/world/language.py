"""Deterministic English for the world: instructions from queries, reasoning traces and scene descriptions."""

from __future__ import annotations

import numpy as np

from segcompass.world.query import Descriptor, Query, Resolution
from segcompass.world.scene import SceneObject
from segcompass.world.vocab import SHAPE_PLURALS

_SINGULAR_TEMPLATES = (
    "{np}",
    "{np}",
    "Segment {np}.",
    "Find {np}.",
    "Show me {np}.",
    "Where is {np}?",
    "Please segment {np}.",
)
_PLURAL_TEMPLATES = ("{np}", "{np}", "Segment {np}.", "Find {np}.", "Show me {np}.", "Please segment {np}.")
_RELATION_WORDS = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
    "nearest to": ("nearest to", "closest to"),
}
_EDGE_ADJ = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}


def descriptor_words(desc: Descriptor, plural: bool = False) -> str:
    """Words of a descriptor, e.g. "large red circle", "blue shapes", "shape"."""
    noun = desc.shape or "shape"
    if plural:
        noun = SHAPE_PLURALS.get(noun, noun + "s")
    return " ".join(w for w in (desc.size, desc.colour, noun) if w)


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def noun_phrase(query: Query, rng: np.random.Generator) -> str:
    """The referring expression of a query, e.g. "the blue shape nearest the left edge"."""
    sup, suffix = query.superlative, ""
    if sup in _EDGE_ADJ and rng.random() < 0.5:
        suffix = f" nearest the {sup} edge"
        sup = None
    elif sup in _EDGE_ADJ:
        sup = _EDGE_ADJ[sup]
    if query.plural:
        head = (
            f"every {descriptor_words(query.target)}"
            if rng.random() < 0.5
            else f"all the {descriptor_words(query.target, True)}"
        )
    else:
        head = " ".join(w for w in ("the", sup, descriptor_words(query.target)) if w)
    clause = ""
    if query.anchor is not None and query.same == "colour":
        clause = f" with the same colour as the {descriptor_words(query.anchor)}"
    elif query.anchor is not None and query.same == "shape":
        clause = f" of the same kind as the {descriptor_words(query.anchor)}"
    elif query.anchor is not None and query.relation:
        clause = f" {_pick(rng, _RELATION_WORDS[query.relation])} the {descriptor_words(query.anchor)}"
    if suffix and clause:
        suffix = "," + suffix
    return head + clause + suffix


def realise(query: Query, rng: np.random.Generator) -> str:
    """Instruction text for a query, wrapped in a random template ("Segment ...", "Where is ...?")."""
    np_text = noun_phrase(query, rng)
    template = _pick(rng, _PLURAL_TEMPLATES if query.plural else _SINGULAR_TEMPLATES)
    return template.format(np=np_text)


def referring_expression(instruction: str) -> str:
    """The noun phrase inside an instruction: `realise` with its template removed.

    "Please segment the red circle." → "the red circle"; "Where is every square?" → "every square"; an
    instruction in no template (typed by a user) is returned stripped of surrounding space.
    """
    text = instruction.strip()
    for template in sorted(set(_SINGULAR_TEMPLATES + _PLURAL_TEMPLATES), key=len, reverse=True):
        prefix, suffix = template.split("{np}")
        if not (prefix or suffix):
            continue
        if text.startswith(prefix) and text.endswith(suffix) and len(text) > len(prefix) + len(suffix):
            return text[len(prefix) : len(text) - len(suffix)].strip()
    return text


def location_words(obj: SceneObject, width: int, height: int) -> str:
    """Coarse 3 x 3 location: "top left", "centre", "bottom" ..."""
    row = ("top", "", "bottom")[min(2, int(3 * obj.cy / height))]
    col = ("left", "", "right")[min(2, int(3 * obj.cx / width))]
    return " ".join(w for w in (row, col) if w) or "centre"


def object_phrase(obj: SceneObject, width: int, height: int) -> str:
    """Full phrase of an object, e.g. "the small red circle at the top left"."""
    return f"the {obj.size_name} {obj.colour} {obj.shape} at the {location_words(obj, width, height)}"


def object_listing(ids: list[int], objects: list[SceneObject], width: int, height: int) -> str:
    """The objects `ids` as "the … , the … and the …" (`object_phrase` each), "none" when there are none."""
    phrases = [object_phrase(objects[i], width, height) for i in ids]
    if not phrases:
        return "none"
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


LISTING_ORDERS: tuple[str, ...] = ("paint", "reading")
"""How a reasoning step lists several objects: "paint", the order they were painted in (the world's data;
the image shows it only where two of them overlap), or "reading", `reading_order` (what the image shows)."""


def reasoning_text(
    query: Query,
    res: Resolution,
    objects: list[SceneObject],
    width: int,
    height: int,
    order: str = "paint",
) -> str:
    """Step-by-step reasoning from the query to its targets, one short sentence per step; a step's objects
    listed in `order` (`LISTING_ORDERS`)."""
    if order not in LISTING_ORDERS:
        raise ValueError(f"order must be one of {LISTING_ORDERS}, got {order!r}")
    rank = {i: r for r, i in enumerate(reading_order(objects, height))} if order == "reading" else None
    out = []
    anchor = objects[res.anchor_id] if res.anchor_id is not None else None
    if anchor is not None:
        out.append(
            f"First find the {descriptor_words(query.anchor)}: it is {object_phrase(anchor, width, height)}."
        )
    for step, ids in res.steps:
        listing = object_listing(sorted(ids, key=rank.get) if rank else ids, objects, width, height)
        if step == "match":
            group = descriptor_words(query.target, plural=True)
            other = "other " if anchor is not None else ""
            out.append(f"{(other + group).capitalize()}: {listing}.")
        elif step == "same" and anchor is not None:
            value = getattr(anchor, str(query.same))
            out.append(f"Of these, the ones with the same {query.same} ({value}): {listing}.")
        elif step == "relation" and query.relation == "nearest to":
            out.append(f"Of these, the nearest to it: {listing}.")
        elif step == "relation":
            out.append(f"Of these, the ones {query.relation} it: {listing}.")
        elif step == "superlative":
            if query.superlative in ("largest", "smallest"):
                out.append(f"The {query.superlative} of them is {listing}.")
            else:
                out.append(f"The one nearest the {query.superlative} edge is {listing}.")
    n = len(res.target_ids)
    if n == 0:
        out.append("So nothing matches: there is no target.")
    elif n == 1:
        out.append(f"So the target is {object_phrase(objects[res.target_ids[0]], width, height)}.")
    else:
        out.append(f"So there are {n} targets.")
    return " ".join(out)


def reading_order(objects: list[SceneObject], height: int) -> list[int]:
    """Indices of `objects` in reading order: the rows of the 3 × 3 grid top to bottom, then left to right."""
    return sorted(range(len(objects)), key=lambda i: (int(3 * objects[i].cy / height), objects[i].cx))


def describe_objects(
    objects: list[SceneObject], width: int, height: int, visible_fraction: list[float] | None = None
) -> str:
    """The scene's objects in reading order, "a large red circle at the top left, … and a small blue star at
    the bottom" (an object less than 90 % visible is marked "(partly hidden)" when `visible_fraction` is
    given)."""
    order = reading_order(objects, height)
    parts = []
    for i in order:
        o = objects[i]
        hidden = " (partly hidden)" if visible_fraction is not None and visible_fraction[i] < 0.9 else ""
        parts.append(
            f"a {o.size_name} {o.colour} {o.shape} at the {location_words(o, width, height)}{hidden}"
        )
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_scene(
    objects: list[SceneObject], visible_fraction: list[float], background: str, width: int, height: int
) -> str:
    """Scene description, objects in reading order, e.g. "A large red circle at the top left, ... on a ..."."""
    text = f"{describe_objects(objects, width, height, visible_fraction)}, on {background}."
    return text[0].upper() + text[1:]
