"""Scene layout: image size, object attributes and occlusion-aware placement."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segcompass.world.config import WorldConfig
from segcompass.world.scene import SceneObject
from segcompass.world.shapes import UNIT_AREAS, rasterize, shape_area, unit_extent
from segcompass.world.vocab import COLOURS, SHAPES, SIZE_RANK, SIZES

_SIZE_WEIGHTS = np.asarray([0.25, 0.4, 0.35])
_EIGHT = np.ones((3, 3), dtype=bool)
_PLACEMENT_TRIES = 30
_NON_CONVEX = frozenset({"star", "cross"})
_COARSE = 4


@dataclass
class Layout:
    """Geometry of a scene before painting: objects and their full and visible masks on their boxes."""

    width: int
    """Image width."""
    height: int
    """Image height."""
    objects: list[SceneObject]
    """Placed objects; id == z == placement order (later objects occlude earlier ones)."""
    boxes: list[tuple[int, int, int, int]]
    """Pixel box (x0, y0, x1, y1) of each object."""
    full: list[np.ndarray]
    """Full (unoccluded) bool mask of each object over its box."""
    visible: list[np.ndarray]
    """Visible bool mask of each object over its box."""

    def visible_masks(self) -> np.ndarray:
        """Visible masks as bool [N, H, W]."""
        out = np.zeros((len(self.objects), self.height, self.width), dtype=bool)
        for i, ((x0, y0, x1, y1), vis) in enumerate(zip(self.boxes, self.visible, strict=True)):
            out[i, y0:y1, x0:x1] = vis
        return out


def sample_image_size(config: WorldConfig, rng: np.random.Generator) -> tuple[int, int]:
    """Width and height drawn uniformly from [min_side, max_side] with aspect ratio <= max_aspect."""
    while True:
        w, h = (int(v) for v in rng.integers(config.min_side, config.max_side + 1, size=2))
        if max(w, h) <= config.max_aspect * min(w, h):
            return w, h


def _object_scale(shape: str, size_name: str, width: int, height: int) -> float:
    diameter = SIZES[size_name] * math.sqrt(width * height)
    scale = math.sqrt(math.pi * diameter * diameter / 4.0 / UNIT_AREAS[shape])
    hx, hy = unit_extent(shape)
    return min(scale, (width / 2 - 3) / hx, (height / 2 - 3) / hy)


def _sample_attributes(config: WorldConfig, rng: np.random.Generator, width: int, height: int) -> list[list]:
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    colours = list(rng.choice(list(COLOURS), size=int(rng.integers(2, 6)), replace=False))
    shapes = list(rng.choice(SHAPES, size=int(rng.integers(2, 6)), replace=False))
    sizes = list(SIZES)
    attrs = [
        [str(rng.choice(shapes)), str(rng.choice(colours)), sizes[int(rng.choice(3, p=_SIZE_WEIGHTS))]]
        for _ in range(n)
    ]
    budget = config.max_cover_fraction * width * height

    def total() -> float:
        return sum(shape_area(s, _object_scale(s, z, width, height)) for s, _, z in attrs)

    while total() > budget:
        shrinkable = [a for a in attrs if SIZE_RANK[a[2]] > 0]
        if shrinkable:
            victim = shrinkable[int(rng.integers(len(shrinkable)))]
            victim[2] = sizes[SIZE_RANK[victim[2]] - 1]
        elif len(attrs) > config.min_objects:
            attrs.pop(int(rng.integers(len(attrs))))
        else:
            break
    return attrs


def _acceptable(vis: np.ndarray, full_area: int, min_fraction: float, hole_check: bool) -> bool:
    """Enough area visible, no holes (checked only when `hole_check`), and no tiny fragments."""
    if int(vis.sum()) < min_fraction * full_area:
        return False
    if hole_check:
        bg_labels, n_bg = ndimage.label(~vis)
        if n_bg > 1:  # background regions that do not touch the box border are holes
            border = np.concatenate([bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1]])
            if np.unique(border[border > 0]).size < n_bg:
                return False
    labels, n = ndimage.label(vis, structure=_EIGHT)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        if sizes.min() < max(30, 0.08 * full_area):
            return False
    return True


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _try_place(
    layout: Layout, box: tuple[int, int, int, int], mask: np.ndarray, convex: bool, min_fraction: float
) -> bool:
    """Place `mask` at `box` on top of the layout if every earlier object stays acceptable.

    Invariant: every background region of an object's box touches the box border (no holes). A convex cover
    that reaches any pixel already outside the visible mask joins such a region, so it cannot open a hole.
    """
    updates = []
    for j, other in enumerate(layout.boxes):
        ov = _overlap(box, other)
        if ov is None:
            continue
        cover = mask[ov[1] - box[1] : ov[3] - box[1], ov[0] - box[0] : ov[2] - box[0]]
        if not cover.any():
            continue
        vis = layout.visible[j].copy()
        sub = vis[ov[1] - other[1] : ov[3] - other[1], ov[0] - other[0] : ov[2] - other[0]]
        hole_check = not convex or not (cover & ~sub).any()
        sub &= ~cover
        if not _acceptable(vis, int(layout.full[j].sum()), min_fraction, hole_check):
            return False
        updates.append((j, vis))
    for j, vis in updates:
        layout.visible[j] = vis
    return True


def _candidate_positions(
    rng: np.random.Generator, occupancy: np.ndarray, bw: int, bh: int
) -> list[tuple[int, int]]:
    """Random top-left corners; usually (p = 0.8) ordered by how much already-occupied area the box covers."""
    height, width = occupancy.shape
    xs = rng.integers(0, width - bw + 1, size=_PLACEMENT_TRIES)
    ys = rng.integers(0, height - bh + 1, size=_PLACEMENT_TRIES)
    if rng.random() < 0.8:
        coarse = occupancy[::_COARSE, ::_COARSE]  # a 4x-subsampled summed-area table is plenty for ranking
        sat = np.zeros((coarse.shape[0] + 1, coarse.shape[1] + 1), dtype=np.int32)
        sat[1:, 1:] = coarse.cumsum(0, dtype=np.int32).cumsum(1)
        x0, y0 = -(-xs // _COARSE), -(-ys // _COARSE)
        x1, y1 = -(-(xs + bw) // _COARSE), -(-(ys + bh) // _COARSE)
        covered = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
        order = np.argsort(covered, kind="stable")
        xs, ys = xs[order], ys[order]
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def sample_layout(config: WorldConfig, rng: np.random.Generator) -> Layout:
    """Draw image size and objects, then place objects one by one (each on top of the previous ones)."""
    width, height = sample_image_size(config, rng)
    for _ in range(20):
        layout = Layout(width, height, [], [], [], [])
        occupancy = np.zeros((height, width), dtype=bool)
        for shape, colour, size_name in _sample_attributes(config, rng, width, height):
            scale = _object_scale(shape, size_name, width, height)
            hx, hy = unit_extent(shape)
            rx, ry = math.ceil(hx * scale) + 1, math.ceil(hy * scale) + 1
            fx, fy = (float(v) for v in rng.random(2))
            local = rasterize(shape, rx + fx, ry + fy, scale, (0, 0, 2 * rx + 2, 2 * ry + 2))
            bw, bh = local.shape[1], local.shape[0]
            for ox, oy in _candidate_positions(rng, occupancy, bw, bh):
                box = (ox, oy, ox + bw, oy + bh)
                if _try_place(layout, box, local, shape not in _NON_CONVEX, config.min_visible_fraction):
                    occupancy[oy : oy + bh, ox : ox + bw] |= local
                    break
            else:
                continue
            jitter = rng.integers(-14, 15, size=3)
            rgb = tuple(min(255, max(0, c + int(d))) for c, d in zip(COLOURS[colour], jitter, strict=True))
            idx = len(layout.objects)
            obj = SceneObject(
                id=idx,
                shape=shape,
                colour=colour,
                size_name=size_name,
                cx=ox + rx + fx,
                cy=oy + ry + fy,
                radius=scale,
                scale=scale,
                area=shape_area(shape, scale),
                z=idx,
                rgb=rgb,  # type: ignore[arg-type]
            )
            layout.objects.append(obj)
            layout.boxes.append(box)
            layout.full.append(local)
            layout.visible.append(local.copy())
        if len(layout.objects) >= config.min_objects:
            return layout
    raise RuntimeError("could not place the minimum number of objects; relax the layout settings")
