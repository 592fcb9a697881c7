"""Mask encodings: COCO RLE (pycocotools) and polygon outlines by boundary tracing."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

# Moore neighbourhood in clockwise order on screen (y points down): E, SE, S, SW, W, NW, N, NE.
_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
_EIGHT = np.ones((3, 3), dtype=bool)


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a bool [H, W] mask, JSON-ready ({"size": [H, W], "counts": str})."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """Bool [H, W] mask of a COCO RLE whose counts may be str (as read from JSON) or bytes."""
    counts = rle["counts"]
    obj = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(obj).astype(bool)


def _trace(comp: np.ndarray) -> list[tuple[int, int]]:
    """Outer boundary pixels (row, col) of one 8-connected component, clockwise (Moore tracing)."""
    padded = np.pad(comp, 1)
    rows, cols = np.nonzero(padded)
    start = (int(rows[0]), int(cols[0]))  # raster-first pixel: its west neighbour is empty
    contour = [start]
    p, back = start, 4  # index in _OFFSETS of the empty neighbour we came from (west)
    limit = 4 * int(comp.sum()) + 8
    for _ in range(limit):
        for i in range(1, 9):
            k = (back + i) % 8
            q = (p[0] + _OFFSETS[k][0], p[1] + _OFFSETS[k][1])
            if padded[q]:
                break
        else:
            return contour  # an isolated pixel
        # the neighbour checked just before q is empty; express it relative to q
        prev = (back + i - 1) % 8
        b = (p[0] + _OFFSETS[prev][0] - q[0], p[1] + _OFFSETS[prev][1] - q[1])
        back = _OFFSETS.index(b)
        if p == start and len(contour) > 1 and q == contour[1]:
            contour.pop()  # back at the start, leaving as the first time: done
            return contour
        contour.append(q)
        p = q
    return contour


def _simplify(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop points where the boundary keeps its direction."""
    n = len(points)
    if n < 3:
        return points
    out = []
    for i in range(n):
        a, b, c = points[i - 1], points[i], points[(i + 1) % n]
        if (b[0] - a[0], b[1] - a[1]) != (c[0] - b[0], c[1] - b[1]):
            out.append(b)
    return out


def mask_polygons(mask: np.ndarray, min_pixels: int = 3) -> list[list[list[float]]]:
    """Outer outlines of the mask's 8-connected components as [[x, y], ...] at pixel centres.

    Components smaller than `min_pixels` and outlines with fewer than 3 vertices are skipped. Holes are not
    represented (the world's layout never creates them).
    """
    labels, n = ndimage.label(mask, structure=_EIGHT)
    polygons = []
    for sl, idx in zip(ndimage.find_objects(labels), range(1, n + 1), strict=True):
        comp = labels[sl] == idx
        if comp.sum() < min_pixels:
            continue
        pts = _simplify(_trace(comp))
        if len(pts) < 3:
            continue
        y0, x0 = sl[0].start - 1, sl[1].start - 1  # undo the slice offset and the padding
        polygons.append([[float(c + x0), float(r + y0)] for r, c in pts])
    return polygons
