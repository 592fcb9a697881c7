"""Targets of the vision objectives, computed from a pooled scene's token-grid coverage (pure functions).

Three granularities, each standing in for part of what a real vision tower brings from web-scale
pretraining:

- **token** (dense, SigLIP/CLIP patch-level stand-in): for every image-token cell, the soft composition of
  what lies under it — per attribute (colour, shape, size), the covered fraction of each class plus the
  background fraction;
- **object** (region/grounding stand-in): the tokens pooled under each object's visible mask (weights =
  coverage) → its colour, shape, size and 3 × 3 position;
- **image** (caption-level stand-in): the mean token → how many objects of each colour and of each shape.
"""

from __future__ import annotations

import numpy as np
import torch

from segcompass.world.vocab import COLOURS, SHAPES, SIZES

from .pool import POSITIONS

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "position")
"""Columns of `PooledScene.attributes`."""
NUM_CLASSES: dict[str, int] = {
    "colour": len(COLOURS),
    "shape": len(SHAPES),
    "size": len(SIZES),
    "position": len(POSITIONS),
}
"""Classes per attribute."""
MAX_COUNT = 8
"""Counts are classified in 0 … MAX_COUNT (the world's most objects per scene)."""


def token_composition(coverage: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 [cells, num_classes + 1]: per cell, the covered fraction of each class (objects of the same
    class add up) and, last, the background fraction; rows sum to 1.

    coverage: [n_obj, rows, cols] cell coverage; classes: int [n_obj] class of each object."""
    n_obj = coverage.shape[0]
    flat = coverage.reshape(n_obj, -1)  # [n_obj, cells]
    out = np.zeros((flat.shape[1], num_classes + 1), dtype=np.float32)
    for o in range(n_obj):
        out[:, classes[o]] += flat[o]
    covered = out[:, :num_classes].sum(1)
    scale = np.where(covered > 1.0, 1.0 / np.maximum(covered, 1e-12), 1.0)  # overlap rounding
    out[:, :num_classes] *= scale[:, None]
    out[:, num_classes] = 1.0 - out[:, :num_classes].sum(1)
    return np.clip(out, 0.0, 1.0)


def covering_object(coverage: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    """int64 [cells]: index of the object covering most of each cell when it covers at least `min_fraction`
    of it, −1 otherwise (coverage: [n_obj, rows, cols])."""
    n_obj, cells = coverage.shape[0], int(np.prod(coverage.shape[1:]))
    if n_obj == 0:
        return np.full(cells, -1, dtype=np.int64)
    flat = coverage.reshape(n_obj, cells)
    return np.where(flat.max(0) >= min_fraction, flat.argmax(0), -1).astype(np.int64)


def covering_labels(coverage: np.ndarray, classes: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    """int64 [cells]: the class of the object covering most of each cell, `len(classes)`-independent
    background label -1, or -2 when neither that object nor the background reaches `min_fraction` of the
    cell (a mixed cell, left out of probes)."""
    background = np.clip(1.0 - coverage.sum(0).reshape(-1), 0.0, 1.0)
    best = covering_object(coverage, min_fraction)
    labels = np.where(background >= min_fraction, -1, -2).astype(np.int64)
    labels[best >= 0] = np.asarray(classes)[best[best >= 0]]
    return labels


def covering_attributes(
    coverage: np.ndarray, attributes: np.ndarray, min_fraction: float = 0.5
) -> np.ndarray:
    """int64 [cells, n_attr]: the attributes of the object covering at least `min_fraction` of each cell,
    −100 (ignored by the loss) where no object does."""
    best = covering_object(coverage, min_fraction)
    out = np.full((len(best), attributes.shape[1]), -100, dtype=np.int64)
    out[best >= 0] = attributes[best[best >= 0]]
    return out


def object_weights(coverage: np.ndarray, min_cells: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Pooling weights of the objects visible enough to be pooled: (weights float32 [n_kept, cells] rows
    summing to 1, kept object indices int64 [n_kept]). An object is kept when its summed coverage is at
    least `min_cells` cells."""
    flat = coverage.reshape(coverage.shape[0], -1)
    total = flat.sum(1)
    keep = np.flatnonzero(total >= min_cells)
    return (flat[keep] / total[keep, None]).astype(np.float32), keep.astype(np.int64)


def attribute_counts(attributes: np.ndarray) -> np.ndarray:
    """int64 [len(COLOURS) + len(SHAPES)]: objects per colour, then per shape, clipped to MAX_COUNT."""
    colours = np.bincount(attributes[:, 0], minlength=NUM_CLASSES["colour"])
    shapes = np.bincount(attributes[:, 1], minlength=NUM_CLASSES["shape"])
    return np.minimum(np.concatenate([colours, shapes]), MAX_COUNT).astype(np.int64)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −Σ_c target_c · log softmax(logits)_c (target rows are distributions)."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def offset_targets(
    coverage: np.ndarray, geometry: np.ndarray, min_fraction: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Dense detection-style targets: for each cell that one object covers at least `min_fraction` of, the
    offset from the cell centre to that object's centre in units of its radius (row, column) and the log of
    its radius in cells. Returns (targets float32 [cells, 3], covered bool [cells])."""
    n_obj, rows, cols = coverage.shape
    out = np.zeros((rows * cols, 3), dtype=np.float32)
    if n_obj == 0:
        return out, np.zeros(rows * cols, dtype=bool)
    best = covering_object(coverage, min_fraction)
    covered = best >= 0
    best = np.maximum(best, 0)  # uncovered rows are zeroed below
    r, c = np.divmod(np.arange(rows * cols), cols)
    cy, cx, radius = (geometry[best, k] for k in range(3))
    radius = np.maximum(radius, 1e-3)
    out[:, 0] = (cy - (r + 0.5)) / radius
    out[:, 1] = (cx - (c + 0.5)) / radius
    out[:, 2] = np.log(radius)
    out[~covered] = 0.0
    return out, covered


def outline_targets(coverage: np.ndarray, fine_coverage: np.ndarray, fine: int) -> np.ndarray:
    """float32 [cells, fine²]: for each cell, the sub-cell coverage of the object that covers most of it
    (zeros where no object covers any of it) — the local outline a token sits on."""
    n_obj, rows, cols = coverage.shape
    out = np.zeros((rows * cols, fine * fine), dtype=np.float32)
    if n_obj == 0:
        return out
    best = coverage.reshape(n_obj, -1).argmax(0)  # [cells]
    blocks = fine_coverage.astype(np.float32).reshape(n_obj, rows, fine, cols, fine)
    blocks = blocks.transpose(0, 1, 3, 2, 4).reshape(n_obj, rows * cols, fine * fine)
    return blocks[best, np.arange(rows * cols)]
