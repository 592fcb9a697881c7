"""A pool of world scenes with the labels every pretraining stage reads, built once per stage run.

A `ScenePool` holds, for N samples of one world split: the image, the image-token grid the tiny backbone's
processor gives it, and per object its attributes and its visible coverage of every image-token cell. The
vision objectives (`vision.py`), the SAM stage and the language stages all draw from it, so the (slow)
world renderer runs once per stage and never inside a training step.

Coverage of cell (r, c) by object o is the fraction of the cell's pixels (in the processor's resized frame)
that o's visible mask covers; background = 1 − Σ_o coverage. It is computed with an area (box) filter, so
it is exact up to the resize of the mask to the grid.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from segcompass.warmup.tasks import POSITIONS, lite_sample
from segcompass.world.config import WorldConfig
from segcompass.world.generate import generate_sample, with_listing_order
from segcompass.world.language import location_words
from segcompass.world.scene import WorldSample
from segcompass.world.vocab import COLOURS, SHAPES, SIZES

if TYPE_CHECKING:
    from segcompass.backbones import Backbone

    from .config import StackConfig

logger = logging.getLogger(__name__)

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
SILHOUETTE = 8
"""Side of the object silhouettes."""
FINE = 4
"""Sub-cells per cell side of `PooledScene.fine_coverage`."""

GridFn = Callable[[int, int], tuple[int, int]]
"""(height, width) of an image → (rows, cols) of its image-token grid."""


@dataclass
class PooledScene:
    """One scene of a pool: the sample (masks dropped) and its token-grid labels."""

    sample: WorldSample
    """The world sample without its masks (`warmup.tasks.lite_sample`; the labels below keep what is needed)."""
    grid: tuple[int, int]
    """(rows, cols) of the image-token grid."""
    coverage: np.ndarray
    """float32 [n_obj, rows, cols]: visible fraction of each cell covered by each object."""
    attributes: np.ndarray
    """int64 [n_obj, 4]: colour, shape, size and 3 × 3 position index of each object."""
    silhouettes: np.ndarray
    """float32 [n_obj, SILHOUETTE, SILHOUETTE]: each object's visible mask inside its visible bounding box,
    area-resized to a fixed square (its outline, whatever its size)."""
    geometry: np.ndarray
    """float32 [n_obj, 3]: each object's centre row, centre column and radius, in grid cells."""
    fine_coverage: np.ndarray
    """float16 [n_obj, FINE·rows, FINE·cols]: coverage on a grid FINE times finer (each cell's outline)."""

    @property
    def background(self) -> np.ndarray:
        """float32 [rows, cols]: fraction of each cell on no object."""
        return np.clip(1.0 - self.coverage.sum(0), 0.0, 1.0)


@dataclass
class ScenePool:
    """Scenes 0 … n − 1 of a world split with token-grid labels (see the module docstring)."""

    split: str
    scenes: list[PooledScene] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> PooledScene:
        return self.scenes[i]


def object_attributes(sample: WorldSample) -> np.ndarray:
    """int64 [n_obj, 4]: (colour, shape, size, position) indices into COLOUR_NAMES, SHAPES, SIZE_NAMES,
    POSITIONS."""
    w, h = sample.scene.width, sample.scene.height
    rows = [
        (
            COLOUR_NAMES.index(o.colour),
            SHAPES.index(o.shape),
            SIZE_NAMES.index(o.size_name),
            POSITIONS.index(location_words(o, w, h)),
        )
        for o in sample.scene.objects
    ]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def cell_coverage(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """float32 [n_obj, rows, cols]: area-averaged coverage of each grid cell by each bool mask [n, H, W]."""
    rows, cols = grid
    out = np.empty((len(masks), rows, cols), dtype=np.float32)
    for i, m in enumerate(masks):
        img = Image.fromarray(m.astype(np.float32), mode="F")
        out[i] = np.asarray(img.resize((cols, rows), Image.Resampling.BOX), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def silhouettes(masks: np.ndarray, side: int = SILHOUETTE) -> np.ndarray:
    """float32 [n, side, side]: each bool mask [n, H, W] cropped to its bounding box and area-resized
    (an empty mask gives zeros)."""
    out = np.zeros((len(masks), side, side), dtype=np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows) == 0:
            continue
        crop = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
        img = Image.fromarray(crop, mode="F").resize((side, side), Image.Resampling.BOX)
        out[i] = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    return out


def object_geometry(sample: WorldSample, grid: tuple[int, int]) -> np.ndarray:
    """float32 [n_obj, 3]: centre row, centre column and radius of each object in grid cells."""
    rows, cols = grid
    sy, sx = rows / sample.scene.height, cols / sample.scene.width
    geo = [(o.cy * sy, o.cx * sx, o.radius * np.sqrt(sx * sy)) for o in sample.scene.objects]
    return np.asarray(geo, dtype=np.float32).reshape(-1, 3)


def pool_scene(sample: WorldSample, grid: tuple[int, int]) -> PooledScene:
    """Label one sample for a token grid."""
    return PooledScene(
        lite_sample(sample),
        grid,
        cell_coverage(sample.masks, grid),
        object_attributes(sample),
        silhouettes(sample.masks),
        object_geometry(sample, grid),
        cell_coverage(sample.masks, (grid[0] * FINE, grid[1] * FINE)).astype(np.float16),
    )


def _render(args: tuple[WorldConfig, str, int]) -> WorldSample:
    return generate_sample(*args)


def build_pool(
    world: WorldConfig, split: str, n: int, grid_fn: GridFn, *, workers: int = 1, progress: bool = False
) -> ScenePool:
    """Render samples 0 … n − 1 of `split` and label them for the grid `grid_fn` gives each image size.

    `workers` > 1 renders in that many processes; the result does not depend on it (a sample is a pure
    function of config, split and index)."""
    jobs = [(world, split, i) for i in range(n)]
    with contextlib.ExitStack() as stack:
        if workers > 1:
            samples = stack.enter_context(ProcessPoolExecutor(workers)).map(_render, jobs, chunksize=16)
        else:
            samples = map(_render, jobs)
        bar = tqdm(samples, total=n, desc=f"scenes {split}", disable=not progress, leave=False)
        return ScenePool(split, [pool_scene(s, grid_fn(s.scene.height, s.scene.width)) for s in bar])


# ---- the stack's pools, labelled for its image processor's grid -----------------------------------
class ProcessorGrid:
    """(height, width) → merged image-token grid, as the Qwen2.5-VL image processor resizes."""

    def __init__(self, min_pixels: int, max_pixels: int, factor: int = 28) -> None:
        self.min_pixels, self.max_pixels, self.factor = min_pixels, max_pixels, factor

    @classmethod
    def of(cls, image_processor: Any) -> ProcessorGrid:
        """The grid of a Qwen2.5-VL image processor's current resize setting."""
        size = image_processor.size
        return cls(
            size.shortest_edge, size.longest_edge, image_processor.patch_size * image_processor.merge_size
        )

    def __call__(self, height: int, width: int) -> tuple[int, int]:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        h, w = smart_resize(
            height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return h // self.factor, w // self.factor


def set_image_pixels(backbone: Backbone, min_pixels: int, max_pixels: int) -> None:
    """Make a Qwen2.5-VL backbone's image processor resize to [min_pixels, max_pixels] pixels."""
    ip = backbone.processor.image_processor
    ip.size = type(ip.size)(shortest_edge=min_pixels, longest_edge=max_pixels)


@functools.lru_cache(maxsize=4)
def _pool(world_json: str, split: str, n: int, pixels: tuple[int, int]) -> ScenePool:
    grid = ProcessorGrid(*pixels)
    world = WorldConfig(**json.loads(world_json))
    return build_pool(world, split, n, grid, workers=min(2, os.cpu_count() or 1))


@functools.lru_cache(maxsize=4)
def _relisted_pool(world_json: str, split: str, n: int, pixels: tuple[int, int], order: str) -> ScenePool:
    pool = _pool(world_json, split, n, pixels)
    if order == "paint":
        return pool
    scenes = [replace(s, sample=with_listing_order(s.sample, order)) for s in pool.scenes]
    return ScenePool(pool.split, scenes)


def scene_pool(config: StackConfig, split: str, pixels: tuple[int, int]) -> ScenePool:
    """The stack's train or val scenes labelled for the grid of `pixels` (built once per process), their
    reasoning listed in `config.reasoning_order`."""
    n = config.train_scenes if split == "train" else config.val_scenes
    return _relisted_pool(json.dumps(config.world, sort_keys=True), split, n, pixels, config.reasoning_order)
