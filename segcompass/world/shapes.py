"""Analytic shapes: unit outlines, areas and rasterisation on pixel-centre grids."""

from __future__ import annotations

import math

import numpy as np


def _regular(n: int, start_deg: float, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
    angles = np.deg2rad(start_deg + np.arange(n) * 360.0 / n)
    r = np.resize(np.asarray(radii), n)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def _cross(t: float = 0.34) -> np.ndarray:
    a = math.sqrt(1.0 - t * t)
    pts = [
        (-t, -a),
        (t, -a),
        (t, -t),
        (a, -t),
        (a, t),
        (t, t),
        (t, a),
        (-t, a),
        (-t, t),
        (-a, t),
        (-a, -t),
        (-t, -t),
    ]
    return np.asarray(pts, dtype=float)


UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": _regular(4, 45.0),
    "diamond": np.asarray([(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]),
    "triangle": _regular(3, -90.0),
    "hexagon": _regular(6, 0.0),
    "star": _regular(10, -90.0, (1.0, 0.45)),
    "cross": _cross(),
}
"""Unit outlines (circumradius 1, image axes: y points down); the circle is handled analytically."""


def polygon_area(points: np.ndarray) -> float:
    """Area of a simple polygon (shoelace formula), points [V, 2]."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


UNIT_AREAS: dict[str, float] = {"circle": math.pi, **{k: polygon_area(v) for k, v in UNIT_POLYGONS.items()}}
"""Area of each unit shape."""


def unit_extent(shape: str) -> tuple[float, float]:
    """Half-width and half-height of the unit shape's bounding box (about its centre)."""
    if shape == "circle":
        return 1.0, 1.0
    pts = UNIT_POLYGONS[shape]
    return float(np.abs(pts[:, 0]).max()), float(np.abs(pts[:, 1]).max())


def shape_polygon(shape: str, cx: float, cy: float, scale: float, circle_vertices: int = 64) -> np.ndarray:
    """Outline of the shape in pixel coordinates, [V, 2] as (x, y); circles become a `circle_vertices`-gon."""
    unit = _regular(circle_vertices, 0.0) if shape == "circle" else UNIT_POLYGONS[shape]
    return unit * scale + np.asarray([cx, cy])


def shape_area(shape: str, scale: float) -> float:
    """Analytic area in square pixels of the shape at `scale`."""
    return UNIT_AREAS[shape] * scale * scale


def rasterize(shape: str, cx: float, cy: float, scale: float, box: tuple[int, int, int, int]) -> np.ndarray:
    """Bool mask of the shape over the pixel box (x0, y0, x1, y1), sampled at pixel centres (i + 0.5)."""
    x0, y0, x1, y1 = box
    px = (np.arange(x0, x1, dtype=np.float64) + 0.5)[None, :] - cx  # float64: the same pixel gets the same
    py = (np.arange(y0, y1, dtype=np.float64) + 0.5)[:, None] - cy  # answer whatever box it is rasterised in
    if shape == "circle":
        return px * px + py * py <= scale * scale
    pts = UNIT_POLYGONS[shape] * scale
    inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for (xa, ya), (xb, yb) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        if ya == yb:
            continue
        crosses = (py >= ya) != (py >= yb)  # [h, 1]
        rows = np.nonzero(crosses[:, 0])[0]
        if rows.size == 0:
            continue
        x_cut = xa + (py[rows] - ya) * ((xb - xa) / (yb - ya))  # [r, 1]
        inside[rows] ^= px < x_cut
    return inside


def bounding_box(
    shape: str, cx: float, cy: float, scale: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Integer pixel box (x0, y0, x1, y1) covering the shape, clipped to the image."""
    hx, hy = unit_extent(shape)
    x0 = max(0, math.floor(cx - hx * scale) - 1)
    y0 = max(0, math.floor(cy - hy * scale) - 1)
    x1 = min(width, math.ceil(cx + hx * scale) + 1)
    y1 = min(height, math.ceil(cy + hy * scale) + 1)
    return x0, y0, x1, y1
