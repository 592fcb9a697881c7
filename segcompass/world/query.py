"""Structured instructions (a tiny query AST) and the generator's resolution of them.

Semantics (shared with the independent checker in `checker.py`, which implements them separately):

1. the anchor descriptor, when present, must match exactly one object;
2. candidates: objects matching the target descriptor, the anchor excluded;
3. `same`: keep candidates that share the anchor's colour (or shape);
4. relation "left of" / "right of" / "above" / "below": keep candidates whose centre lies on that side of
   the anchor's centre (a half-plane test on x or y); "nearest to": the candidate whose centre is nearest
   the anchor's centre;
5. superlative "largest" / "smallest": the candidate of highest / lowest size class; "left" / "right" /
   "top" / "bottom": the candidate whose centre is nearest that image edge;
6. a singular query ("the ...") refers to at most one object, a plural one ("every ...", "all the ...") to
   all remaining candidates.

The generator only emits queries whose answer is clear: no ties and, for geometric tests, a margin of
`MARGIN_FRACTION * sqrt(width * height)` pixels between the decisive quantities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from segcompass.world.scene import SceneObject

MARGIN_FRACTION = 0.06
"""Geometric decisions must clear this fraction of sqrt(width * height) (about 12 px at 200 x 200)."""

DIRECTIONAL = ("left of", "right of", "above", "below")
"""Half-plane relations."""


@dataclass(frozen=True)
class Descriptor:
    """A conjunction of attribute values; None means "any"."""

    shape: str | None = None
    """Required shape, or None."""
    colour: str | None = None
    """Required colour, or None."""
    size: str | None = None
    """Required size class, or None."""

    def matches(self, obj: SceneObject) -> bool:
        """Whether `obj` has every attribute the descriptor names."""
        return (
            (self.shape is None or obj.shape == self.shape)
            and (self.colour is None or obj.colour == self.colour)
            and (self.size is None or obj.size_name == self.size)
        )


@dataclass(frozen=True)
class Query:
    """Structured form of an instruction (see the module docstring for its semantics)."""

    kind: str
    """Instruction kind ("plain", "attribute", "relational", "multi", "no_target")."""
    target: Descriptor
    """Descriptor the referred objects must match."""
    plural: bool = False
    """True for "every ..." / "all the ..." (any number of targets), False for "the ..." (at most one)."""
    anchor: Descriptor | None = None
    """Descriptor of the anchor object of a `same` or `relation` clause."""
    same: str | None = None
    """Attribute ("colour" or "shape") that candidates must share with the anchor."""
    relation: str | None = None
    """One of `vocab.RELATIONS`, relative to the anchor."""
    superlative: str | None = None
    """Superlative: "largest", "smallest", or an edge "left" / "right" / "top" / "bottom" (nearest it)."""


@dataclass
class Resolution:
    """The generator's answer to a query, with the intermediate candidate sets for the reasoning text."""

    target_ids: list[int]
    """Referred objects (empty when nothing qualifies)."""
    anchor_id: int | None = None
    """The anchor object, if the query has one."""
    steps: list[tuple[str, list[int]]] = field(default_factory=list)
    """("match" | "same" | "relation" | "superlative", candidate ids after that step)."""


def _side_offset(relation: str, obj: SceneObject, anchor: SceneObject) -> float:
    """Positive when `obj` lies on the `relation` side of `anchor`."""
    if relation == "left of":
        return anchor.cx - obj.cx
    if relation == "right of":
        return obj.cx - anchor.cx
    if relation == "above":
        return anchor.cy - obj.cy
    return obj.cy - anchor.cy


def _edge_distance(edge: str, obj: SceneObject, width: int, height: int) -> float:
    return {"left": obj.cx, "right": width - obj.cx, "top": obj.cy, "bottom": height - obj.cy}[edge]


def _clear_best(cands: list[SceneObject], key, margin: float) -> SceneObject | None:
    """Candidate with the smallest `key`, or None when the runner-up is within `margin` of it."""
    ranked = sorted(cands, key=key)
    if len(ranked) > 1 and key(ranked[1]) - key(ranked[0]) < margin:
        return None
    return ranked[0]


def _superlative_best(
    superlative: str, cands: list[SceneObject], width: int, height: int, margin: float
) -> SceneObject | None:
    if superlative == "largest":
        return _clear_best(cands, lambda o: -o.size_rank, 0.5)
    if superlative == "smallest":
        return _clear_best(cands, lambda o: o.size_rank, 0.5)
    return _clear_best(cands, lambda o: _edge_distance(superlative, o, width, height), margin)


def resolve(query: Query, objects: list[SceneObject], width: int, height: int) -> Resolution | None:
    """Targets of `query` in the scene, or None when the query is ambiguous or too close to call."""
    margin = MARGIN_FRACTION * math.sqrt(width * height)
    anchor = None
    if query.anchor is not None:
        anchors = [o for o in objects if query.anchor.matches(o)]
        if len(anchors) != 1:
            return None
        anchor = anchors[0]
    elif query.same or query.relation:
        return None
    cands = [o for o in objects if query.target.matches(o) and o is not anchor]
    res = Resolution([], anchor.id if anchor is not None else None, [("match", [o.id for o in cands])])
    if query.same and anchor is not None:
        cands = [o for o in cands if getattr(o, query.same) == getattr(anchor, query.same)]
        res.steps.append(("same", [o.id for o in cands]))
    if query.relation in DIRECTIONAL and anchor is not None:
        offsets = [_side_offset(query.relation, o, anchor) for o in cands]
        if any(abs(d) < margin for d in offsets):
            return None
        cands = [o for o, d in zip(cands, offsets, strict=True) if d > 0]
        res.steps.append(("relation", [o.id for o in cands]))
    elif query.relation == "nearest to" and anchor is not None and cands:
        best = _clear_best(cands, lambda o: math.hypot(o.cx - anchor.cx, o.cy - anchor.cy), margin)
        if best is None:
            return None
        cands = [best]
        res.steps.append(("relation", [best.id]))
    if query.superlative is not None and cands:
        if query.plural:
            return None
        best = _superlative_best(query.superlative, cands, width, height, margin)
        if best is None:
            return None
        cands = [best]
        res.steps.append(("superlative", [best.id]))
    if not query.plural and len(cands) > 1:
        return None
    res.target_ids = sorted(o.id for o in cands)
    return res
