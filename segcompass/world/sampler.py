"""Drawing a query of a requested kind for a scene (the generator's side; answers come from `query.resolve`)."""

from __future__ import annotations

import numpy as np

from segcompass.world.query import DIRECTIONAL, Descriptor, Query, Resolution, resolve
from segcompass.world.scene import SceneObject
from segcompass.world.vocab import COLOURS, EDGES, RELATIONS, SHAPES

# Descriptor forms as (size?, colour?, shape?) and their preference weight for referring to one object.
_FORMS: dict[tuple[bool, bool, bool], float] = {
    (False, True, True): 4.0,
    (False, False, True): 1.5,
    (False, True, False): 1.5,
    (True, True, True): 1.5,
    (True, False, True): 0.7,
    (True, True, False): 0.7,
}
_TRIES = 12


def _descriptor(obj: SceneObject, form: tuple[bool, bool, bool]) -> Descriptor:
    use_size, use_colour, use_shape = form
    return Descriptor(
        shape=obj.shape if use_shape else None,
        colour=obj.colour if use_colour else None,
        size=obj.size_name if use_size else None,
    )


def unique_descriptor(
    obj: SceneObject, objects: list[SceneObject], rng: np.random.Generator, avoid: str | None = None
) -> Descriptor | None:
    """A random descriptor that matches `obj` and no other object; `avoid` ("colour"/"shape") is left out."""
    forms = [f for f in _FORMS if not (avoid == "colour" and f[1]) and not (avoid == "shape" and f[2])]
    good = [f for f in forms if sum(_descriptor(obj, f).matches(o) for o in objects) == 1]
    if not good:
        return None
    weights = np.asarray([_FORMS[f] for f in good])
    return _descriptor(obj, good[int(rng.choice(len(good), p=weights / weights.sum()))])


def _group_descriptors(objects: list[SceneObject], allow_size: bool) -> list[Descriptor]:
    """Distinct descriptors (colour, shape, colour+shape, optionally size) present in the scene."""
    out: dict[Descriptor, None] = {}
    for o in objects:
        out[Descriptor(colour=o.colour)] = None
        out[Descriptor(shape=o.shape)] = None
        out[Descriptor(shape=o.shape, colour=o.colour)] = None
        if allow_size:
            out[Descriptor(size=o.size_name)] = None
    return list(out)


def _count(desc: Descriptor, objects: list[SceneObject], exclude: int | None = None) -> int:
    return sum(desc.matches(o) for o in objects if o.id != exclude)


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _plain(objects: list[SceneObject], rng: np.random.Generator) -> Query | None:
    obj = _pick(rng, objects)
    desc = unique_descriptor(obj, objects, rng)
    return Query("plain", desc) if desc is not None else None


def _attribute(objects: list[SceneObject], rng: np.random.Generator) -> Query | None:
    variant = rng.random()
    if variant < 0.6:  # same colour / shape as an anchor, maybe narrowed by a superlative
        anchor = _pick(rng, objects)
        same = "colour" if rng.random() < 0.6 else "shape"
        anchor_desc = unique_descriptor(anchor, objects, rng, avoid=same)
        if anchor_desc is None:
            return None
        sharing = [o for o in objects if o.id != anchor.id and getattr(o, same) == getattr(anchor, same)]
        if not sharing:
            return None
        sup = None if len(sharing) == 1 else _pick(rng, ["largest", "smallest", *EDGES])
        return Query("attribute", Descriptor(), anchor=anchor_desc, same=same, superlative=sup)
    # superlative over a group: "the largest blue shape", "the circle nearest the top edge"
    groups = [d for d in _group_descriptors(objects, False) if _count(d, objects) >= 2]
    groups.append(Descriptor())
    desc = _pick(rng, groups)
    sup = _pick(rng, ["largest", "smallest"]) if variant < 0.8 else _pick(rng, list(EDGES))
    return Query("attribute", desc, superlative=sup)


def _relational(objects: list[SceneObject], rng: np.random.Generator) -> Query | None:
    anchor = _pick(rng, objects)
    anchor_desc = unique_descriptor(anchor, objects, rng)
    if anchor_desc is None:
        return None
    relation = _pick(rng, list(RELATIONS))
    groups = [
        d for d in [*_group_descriptors(objects, False), Descriptor()] if _count(d, objects, anchor.id) >= 2
    ]
    if not groups:
        return None
    return Query("relational", _pick(rng, groups), anchor=anchor_desc, relation=relation)


def _multi(objects: list[SceneObject], rng: np.random.Generator) -> Query | None:
    if rng.random() < 0.3:
        anchor = _pick(rng, objects)
        anchor_desc = unique_descriptor(anchor, objects, rng)
        if anchor_desc is None:
            return None
        groups = [*_group_descriptors(objects, False), Descriptor()]
        return Query(
            "multi",
            _pick(rng, groups),
            plural=True,
            anchor=anchor_desc,
            relation=_pick(rng, list(DIRECTIONAL)),
        )
    groups = [d for d in _group_descriptors(objects, True) if _count(d, objects) >= 2]
    return Query("multi", _pick(rng, groups), plural=True) if groups else None


def _absent_descriptor(objects: list[SceneObject], rng: np.random.Generator) -> Descriptor | None:
    """A colour + shape (or, rarely, colour-only / shape-only) descriptor that matches nothing."""
    roll = rng.random()
    if roll < 0.15:
        missing = [c for c in COLOURS if not any(o.colour == c for o in objects)]
        return Descriptor(colour=_pick(rng, missing)) if missing else None
    if roll < 0.3:
        missing = [s for s in SHAPES if not any(o.shape == s for o in objects)]
        return Descriptor(shape=_pick(rng, missing)) if missing else None
    # near miss: borrow the colour or the shape of an existing object
    obj = _pick(rng, objects)
    if rng.random() < 0.5:
        desc = Descriptor(shape=obj.shape, colour=str(_pick(rng, list(COLOURS))))
    else:
        desc = Descriptor(shape=str(_pick(rng, list(SHAPES))), colour=obj.colour)
    return None if _count(desc, objects) else desc


def _no_target(objects: list[SceneObject], rng: np.random.Generator) -> Query | None:
    roll = rng.random()
    if roll < 0.5:
        desc = _absent_descriptor(objects, rng)
        if desc is None:
            return None
        return Query("no_target", desc, plural=bool(rng.random() < 0.25))
    anchor = _pick(rng, objects)
    if roll < 0.75:  # nothing shares the anchor's colour / shape
        same = "colour" if rng.random() < 0.6 else "shape"
        anchor_desc = unique_descriptor(anchor, objects, rng, avoid=same)
        return Query("no_target", Descriptor(), anchor=anchor_desc, same=same) if anchor_desc else None
    anchor_desc = unique_descriptor(anchor, objects, rng)  # an existing group, but not on that side
    groups = [d for d in _group_descriptors(objects, False) if _count(d, objects, anchor.id) >= 1]
    if anchor_desc is None or not groups:
        return None
    return Query("no_target", _pick(rng, groups), anchor=anchor_desc, relation=_pick(rng, list(DIRECTIONAL)))


_SAMPLERS = {
    "plain": _plain,
    "attribute": _attribute,
    "relational": _relational,
    "multi": _multi,
    "no_target": _no_target,
}


def _fits(kind: str, query: Query, res: Resolution) -> bool:
    n = len(res.target_ids)
    if kind == "no_target":
        return n == 0
    if kind == "multi":
        return n >= 2
    return n == 1


def sample_query(
    kind: str, objects: list[SceneObject], width: int, height: int, rng: np.random.Generator
) -> tuple[Query, Resolution] | None:
    """A query of `kind` with a clear answer in this scene, and its resolution; None if none was found."""
    for _ in range(_TRIES):
        query = _SAMPLERS[kind](objects, rng)
        if query is None:
            continue
        res = resolve(query, objects, width, height)
        if res is not None and _fits(kind, query, res):
            return query, res
    return None
