"""Stage 1 — vision pretraining of the tiny VLM's vision tower (and its patch merger) on the world.

The objectives (`labels.py`) stand in for what a real tower brings from CLIP/SigLIP-style web pretraining:
a dense per-token composition target, an object-level target on the tokens pooled under each object, and
an image-level counting target. Small linear heads read the merger's output (the tokens the LLM will see);
they are discarded after the stage.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from segcompass.backbones import Backbone

from .labels import (
    ATTRIBUTES,
    MAX_COUNT,
    NUM_CLASSES,
    attribute_counts,
    covering_attributes,
    object_weights,
    offset_targets,
    outline_targets,
    soft_cross_entropy,
    token_composition,
)
from .optim import LoopRecord, Schedule, run_loop
from .pool import FINE, SILHOUETTE, PooledScene, ScenePool

logger = logging.getLogger(__name__)

TOKEN_FIELDS: tuple[str, ...] = ("colour", "shape", "size")
"""Attributes of the dense composition target (position is an object-level property)."""


@dataclass
class VisionObjective:
    """Weights of the three vision objectives."""

    token_weight: float = 1.0
    """Dense per-token composition (colour, shape, size + background)."""
    object_weight: float = 1.0
    """Pooled object → colour, shape, size, 3 × 3 position."""
    image_weight: float = 0.5
    """Mean token → count of each colour and each shape."""
    offset_weight: float = 1.0
    """Dense detection-style target: each covered token → offset to its object's centre and its radius."""
    outline_weight: float = 1.0
    """Dense SAM-like target: each token → the sub-cell mask of the object covering most of it."""
    silhouette_weight: float = 1.0
    """Pooled object → its visible outline (`pool.SILHOUETTE`² inside its bounding box)."""
    token_object_weight: float = 1.0
    """Dense grounding target: each token an object covers at least half of → that object's colour, shape,
    size and 3 × 3 position (the object's properties in every one of its tokens, as grounding-trained
    towers carry them)."""
    token_count_weight: float = 0.0
    """Dense count target: each token an object covers at least half of → how many objects of that object's
    colour, and of its kind, the image holds (0 … `labels.MAX_COUNT`): global context in every object
    token, as a tower with full attention can carry it, so that a count becomes a look-up of the named
    kind's tokens. 0: off (the read-out is not even built, so the stage's random draws stay as before)."""


class VisionHeads(nn.Module):
    """Linear read-outs of the merged image tokens for the three objectives."""

    def __init__(self, dim: int, token_counts: bool = False) -> None:
        super().__init__()
        self.token = nn.ModuleDict({f: nn.Linear(dim, NUM_CLASSES[f] + 1) for f in TOKEN_FIELDS})
        self.object = nn.ModuleDict({f: nn.Linear(dim, NUM_CLASSES[f]) for f in ATTRIBUTES})
        n_counts = NUM_CLASSES["colour"] + NUM_CLASSES["shape"]
        self.image = nn.Linear(dim, n_counts * (MAX_COUNT + 1))
        self.offset = nn.Linear(dim, 3)
        self.outline = nn.Linear(dim, FINE * FINE)
        self.silhouette = nn.Linear(dim, SILHOUETTE * SILHOUETTE)
        self.token_object = nn.ModuleDict({f: nn.Linear(dim, NUM_CLASSES[f]) for f in ATTRIBUTES})
        # built last and only when asked, so that the other read-outs' initial weights stay as they were
        self.token_count = nn.Linear(dim, 2 * (MAX_COUNT + 1)) if token_counts else None


@dataclass
class VisionBatch:
    """Targets of a batch of pooled scenes, aligned with the tower's merged tokens (raster order per image)."""

    token_targets: dict[str, torch.Tensor]
    """Per field: float [cells, classes + 1] compositions."""
    object_weights: torch.Tensor
    """float [n_objects, cells]: pooling weights over the batch's cells (zero outside the object's image)."""
    object_labels: torch.Tensor
    """int64 [n_objects, 4]: colour, shape, size, position."""
    image_index: torch.Tensor
    """int64 [cells]: which image each cell belongs to."""
    counts: torch.Tensor
    """int64 [B, 14]: per image, objects of each colour then each shape."""
    offsets: torch.Tensor
    """float [cells, 3]: `labels.offset_targets` (zeros where `covered` is False)."""
    covered: torch.Tensor
    """bool [cells]: cells with an offset target."""
    silhouettes: torch.Tensor
    """float [n_objects, SILHOUETTE²]: outlines of the pooled objects."""
    outlines: torch.Tensor
    """float [cells, FINE²]: `labels.outline_targets`."""
    token_objects: torch.Tensor
    """int64 [cells, 4]: colour, shape, size, position of the object covering at least half of each cell
    (−100 where none does)."""


def vision_batch(scenes: list[PooledScene]) -> VisionBatch:
    """Assemble the targets of `scenes` in the order the tower emits their tokens."""
    sizes = [s.grid[0] * s.grid[1] for s in scenes]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    token_targets = {
        f: torch.from_numpy(
            np.concatenate(
                [token_composition(s.coverage, s.attributes[:, i], NUM_CLASSES[f]) for s in scenes]
            )
        )
        for i, f in enumerate(TOKEN_FIELDS)
    }
    rows, labels, outlines, dense, covered, token_objects = [], [], [], [], [], []
    for s, start in zip(scenes, offsets[:-1], strict=True):
        weights, keep = object_weights(s.coverage)
        block = np.zeros((len(keep), total), dtype=np.float32)
        block[:, start : start + weights.shape[1]] = weights
        rows.append(block)
        labels.append(s.attributes[keep])
        outlines.append(s.silhouettes[keep].reshape(len(keep), -1))
        target, mask = offset_targets(s.coverage, s.geometry)
        dense.append(target)
        covered.append(mask)
        token_objects.append(covering_attributes(s.coverage, s.attributes))
    image_index = np.repeat(np.arange(len(scenes)), sizes)
    return VisionBatch(
        token_targets=token_targets,
        object_weights=torch.from_numpy(np.concatenate(rows)),
        object_labels=torch.from_numpy(np.concatenate(labels)),
        image_index=torch.from_numpy(image_index),
        counts=torch.from_numpy(np.stack([attribute_counts(s.attributes) for s in scenes])),
        offsets=torch.from_numpy(np.concatenate(dense)),
        covered=torch.from_numpy(np.concatenate(covered)),
        silhouettes=torch.from_numpy(np.concatenate(outlines)),
        outlines=torch.from_numpy(
            np.concatenate([outline_targets(s.coverage, s.fine_coverage, FINE) for s in scenes])
        ),
        token_objects=torch.from_numpy(np.concatenate(token_objects)),
    )


class PixelCache:
    """The image processor's output (patches and grid) of each pool image, computed on first use.

    A stage-1 run draws every image many times; the processor's resize + normalise + patchify is a fifth
    of a step, so it runs once per image (float32 patches, ≈ 1.2 MB per image at 224²)."""

    def __init__(self, backbone: Backbone, pool: ScenePool) -> None:
        self.backbone, self.pool = backbone, pool
        self._items: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values [patches, C·T·P·P], image_grid_thw [B, 3]) of pool images `indices`."""
        missing = [i for i in dict.fromkeys(indices) if i not in self._items]
        if missing:
            inputs = self.backbone.processor.image_processor(
                images=[self.pool[i].sample.image for i in missing], return_tensors="pt"
            )
            grid = inputs["image_grid_thw"]
            for i, patches, g in zip(
                missing, torch.split(inputs["pixel_values"], grid.prod(-1).tolist()), grid, strict=True
            ):
                self._items[i] = (patches, g)
        items = [self._items[i] for i in indices]
        return torch.cat([p for p, _ in items]), torch.stack([g for _, g in items])


def image_tokens(
    backbone: Backbone, scenes: list[PooledScene], pixels: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """The merged image tokens of `scenes` [cells, D], in raster order per image, with gradient.

    `pixels`: the processor's (pixel_values, image_grid_thw) of these scenes when already at hand
    (`PixelCache`); computed here otherwise."""
    if pixels is None:
        inputs = backbone.processor.image_processor(
            images=[s.sample.image for s in scenes], return_tensors="pt"
        )
        pixels = inputs["pixel_values"], inputs["image_grid_thw"]
    pixel_values, grid = pixels
    expected = [s.grid for s in scenes]
    got = [(int(h) // 2, int(w) // 2) for _, h, w in grid.tolist()]
    if got != expected:
        raise ValueError(f"pool grids {expected[:3]}… do not match the processor's {got[:3]}…")
    visual = backbone.model.model.visual
    out = visual(pixel_values.to(visual.dtype), grid_thw=grid)
    return out.pooler_output  # [cells, D]


@dataclass
class VisionLoss:
    """The stage's loss and its parts (floats for logging)."""

    total: torch.Tensor
    parts: dict[str, float]


def vision_loss(
    heads: VisionHeads, tokens: torch.Tensor, batch: VisionBatch, objective: VisionObjective
) -> VisionLoss:
    """Weighted sum of the dense, object and image objectives on merged tokens [cells, D]."""
    tokens = tokens.float()
    parts: dict[str, torch.Tensor] = {}
    parts["token"] = sum(
        soft_cross_entropy(heads.token[f](tokens), batch.token_targets[f]) for f in TOKEN_FIELDS
    ) / len(TOKEN_FIELDS)
    pooled = batch.object_weights @ tokens  # [n_obj, D]
    parts["object"] = sum(
        nn.functional.cross_entropy(heads.object[f](pooled), batch.object_labels[:, i])
        for i, f in enumerate(ATTRIBUTES)
    ) / len(ATTRIBUTES)
    n_images = batch.counts.shape[0]
    mean = torch.zeros(n_images, tokens.shape[1]).index_add_(0, batch.image_index, tokens)
    mean = mean / torch.bincount(batch.image_index, minlength=n_images).clamp(min=1)[:, None]
    count_logits = heads.image(mean).view(n_images, -1, MAX_COUNT + 1)  # [B, 14, 9]
    parts["image"] = nn.functional.cross_entropy(count_logits.flatten(0, 1), batch.counts.flatten())
    offsets = heads.offset(tokens[batch.covered])  # [covered, 3]
    parts["offset"] = nn.functional.smooth_l1_loss(offsets, batch.offsets[batch.covered])
    parts["outline"] = nn.functional.binary_cross_entropy_with_logits(heads.outline(tokens), batch.outlines)
    parts["silhouette"] = nn.functional.binary_cross_entropy_with_logits(
        heads.silhouette(pooled), batch.silhouettes
    )
    if objective.token_object_weight > 0 and bool((batch.token_objects[:, 0] >= 0).any()):
        parts["token_object"] = sum(
            nn.functional.cross_entropy(
                heads.token_object[f](tokens), batch.token_objects[:, i], ignore_index=-100
            )
            for i, f in enumerate(ATTRIBUTES)
        ) / len(ATTRIBUTES)
    if objective.token_count_weight > 0:
        parts["token_count"] = _token_count_loss(heads, tokens, batch)
    total = (
        objective.token_weight * parts["token"]
        + objective.object_weight * parts["object"]
        + objective.image_weight * parts["image"]
        + objective.offset_weight * parts["offset"]
        + objective.outline_weight * parts["outline"]
        + objective.silhouette_weight * parts["silhouette"]
        + objective.token_object_weight * parts.get("token_object", 0.0)
        + objective.token_count_weight * parts.get("token_count", 0.0)
    )
    if not math.isfinite(float(total.detach())):
        raise FloatingPointError(f"vision loss is not finite: { {k: float(v) for k, v in parts.items()} }")
    return VisionLoss(total, {k: float(v.detach()) for k, v in parts.items()})


def _token_count_loss(heads: VisionHeads, tokens: torch.Tensor, batch: VisionBatch) -> torch.Tensor:
    """Cross-entropy of each covered token's read-out of how many objects of its object's colour and of its
    kind its image holds (`VisionObjective.token_count_weight`); 0 when no token is covered."""
    if heads.token_count is None:
        raise ValueError("the token count target needs VisionHeads(..., token_counts=True)")
    colour, shape = batch.token_objects[:, 0], batch.token_objects[:, 1]  # [cells], −100 where uncovered
    covered = colour >= 0
    if not bool(covered.any()):
        return tokens.sum() * 0.0
    image = batch.image_index[covered]
    targets = torch.stack(  # [covered, 2]: objects of the token's colour, of its kind
        [
            batch.counts[image, colour[covered]],
            batch.counts[image, NUM_CLASSES["colour"] + shape[covered]],
        ],
        dim=1,
    )
    logits = heads.token_count(tokens[covered]).view(-1, 2, MAX_COUNT + 1)  # [covered, 2, 9]
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train_tower(
    backbone: Backbone,
    pool: ScenePool,
    schedule: Schedule,
    objective: VisionObjective,
    seed: int,
    desc: str,
    before_step: Callable[[int], None] | None = None,
) -> LoopRecord:
    """Train the tower + merger (with fresh read-out heads, discarded after) on `objective` over the scenes
    of `pool` (the backbone's image processor must give their grids); `before_step(step)` runs before each
    step (e.g. periodic probes)."""
    heads = VisionHeads(backbone.hidden_size, token_counts=objective.token_count_weight > 0)
    pixels = PixelCache(backbone, pool)

    def step_loss(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if before_step is not None:
            before_step(step)
        picks = [int(i) for i in rng.choice(len(pool), size=schedule.batch_size, replace=False)]
        scenes = [pool[i] for i in picks]
        tokens = image_tokens(backbone, scenes, pixels.batch(picks))
        loss = vision_loss(heads, tokens, vision_batch(scenes), objective)
        return loss.total, loss.parts

    return run_loop([backbone.model.model.visual, heads], schedule, step_loss, seed, desc)
