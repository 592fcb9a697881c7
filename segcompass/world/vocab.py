"""The closed vocabulary of the synthetic world: shapes, colours, sizes, instruction kinds.

These are data, not logic: the generator and the independent checker both read the names, but each
implements its own selection code.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon")
"""Shape names; they double as the COCO categories (ids 1..7 in this order)."""

SHAPE_PLURALS: dict[str, str] = {s: (s + "es" if s.endswith(("s", "x", "ss")) else s + "s") for s in SHAPES}
"""Plural form of each shape noun ("cross" -> "crosses")."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (236, 206, 30),
    "purple": (148, 70, 190),
    "orange": (245, 130, 20),
    "cyan": (30, 190, 205),
}
"""Colour names and their nominal RGB values (objects are drawn with small jitter and shading)."""

SIZES: dict[str, float] = {"small": 0.28, "medium": 0.38, "large": 0.50}
"""Size classes: the diameter of the equal-area circle as a fraction of sqrt(width * height)."""

SIZE_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SIZES)}
"""Order of the size classes (small < medium < large); "largest" and "smallest" use this rank."""

KINDS: tuple[str, ...] = ("plain", "attribute", "relational", "multi", "no_target")
"""Instruction kinds, from single-step referring to multi-target and absent-target instructions."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "nearest to")
"""Spatial relations to an anchor object (centre-based; see `query.py` for the exact definitions)."""

EDGES: tuple[str, ...] = ("left", "right", "top", "bottom")
"""Image edges used by the positional superlatives ("nearest the left edge", "leftmost")."""
