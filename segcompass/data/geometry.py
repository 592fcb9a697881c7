"""COCO segmentations and labelme polygons → bool masks (pycocotools and PIL).

COCO (``annotation["segmentation"]``), as pycocotools reads it:

- a list of polygon parts ``[[x0, y0, x1, y1, …], …]``: every part goes through ``frPyObjects(parts, h, w)``
  and the parts are united. A part with exactly 4 numbers is read as a box ``[x, y, w, h]`` (what
  ``frPyObjects`` does with it); a part with fewer than 6 numbers otherwise, or an odd count, is invalid;
- an RLE dict ``{"size": [h, w], "counts": str | list}``: compressed counts read from JSON are strings and
  are encoded to bytes; a list of counts is an uncompressed RLE (``iscrowd`` annotations).

Labelme/ReasonSeg polygons (``[[x, y], …]``) are filled with PIL after truncating the coordinates to
integers (as LISA's ``np.int32`` cast before ``cv2.fillPoly``); fewer than 3 points is invalid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils


@dataclass
class SegmentationCheck:
    """What a COCO segmentation holds, found without decoding it."""

    polygons: list[list[float]] = field(default_factory=list)
    """Valid polygon parts (≥ 6 numbers, even count)."""
    boxes: list[list[float]] = field(default_factory=list)
    """Parts of exactly 4 numbers, read as [x, y, w, h] boxes."""
    invalid: list[str] = field(default_factory=list)
    """Why each invalid part (or the whole RLE) was rejected."""
    rle: dict[str, Any] | None = None
    """The RLE, when the segmentation is one (counts as bytes or a list)."""

    @property
    def usable(self) -> bool:
        """At least one valid part (or a valid RLE)."""
        return bool(self.polygons or self.boxes or self.rle is not None)


def check_segmentation(seg: Any, height: int, width: int) -> SegmentationCheck:
    """Sort the parts of a COCO segmentation into polygons, boxes and invalid parts."""
    out = SegmentationCheck()
    if isinstance(seg, dict):
        try:
            size = [int(s) for s in seg.get("size", [])]
        except (TypeError, ValueError):
            out.invalid.append(f"RLE size {seg.get('size')!r} is not a list of integers")
            return out
        counts = seg.get("counts")
        if size != [height, width]:
            out.invalid.append(f"RLE size {size} != image size {[height, width]}")
        elif isinstance(counts, str) and not counts.isascii():
            out.invalid.append("RLE counts string is not ASCII")
        elif isinstance(counts, str):
            out.rle = {"size": size, "counts": counts.encode("ascii")}
        elif isinstance(counts, bytes | list):
            out.rle = {"size": size, "counts": counts}
        else:
            out.invalid.append(f"RLE counts of type {type(counts).__name__}")
        return out
    if not isinstance(seg, list):
        out.invalid.append(f"segmentation of type {type(seg).__name__}")
        return out
    for i, part in enumerate(seg):
        if not isinstance(part, list | tuple) or not all(isinstance(v, int | float) for v in part):
            out.invalid.append(f"part {i} is not a list of numbers")
        elif len(part) == 4:
            out.boxes.append([float(v) for v in part])
        elif len(part) < 6 or len(part) % 2:
            out.invalid.append(f"part {i} has {len(part)} numbers (a polygon needs an even count ≥ 6)")
        else:
            out.polygons.append([float(v) for v in part])
    return out


def decode_segmentation(check: SegmentationCheck, height: int, width: int) -> np.ndarray:
    """Bool [H, W] union of the valid parts of a checked segmentation (all False if none)."""
    if check.rle is not None:
        rle = check.rle
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        return mask_utils.decode(rle).astype(bool)
    out = np.zeros((height, width), dtype=bool)
    if check.polygons:
        out |= (
            mask_utils.decode(mask_utils.frPyObjects(check.polygons, height, width)).astype(bool).any(axis=2)
        )
    if check.boxes:  # pycocotools reads boxes from an [n, 4] float array
        rles = mask_utils.frPyObjects(np.asarray(check.boxes, dtype=np.float64), height, width)
        out |= mask_utils.decode(rles).astype(bool).any(axis=2)
    return out


def polygon_points(points: Any) -> list[tuple[int, int]] | None:
    """Integer (x, y) vertices of a labelme polygon, or None if it is not a list of ≥ 3 [x, y] pairs."""
    if not isinstance(points, list) or len(points) < 3:
        return None
    out = []
    for p in points:
        if not isinstance(p, list | tuple) or len(p) != 2:
            return None
        try:
            out.append((int(p[0]), int(p[1])))
        except (TypeError, ValueError):
            return None
    return out


def fill_polygon(points: list[tuple[int, int]], height: int, width: int) -> np.ndarray:
    """Bool [H, W] mask of one filled polygon (boundary pixels included)."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)
