"""Sample generation: a sample is a pure function of (config, split, index)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import numpy as np

from segcompass.world.config import WorldConfig, resolve_split_seed, sample_rng
from segcompass.world.language import describe_scene, realise, reasoning_text
from segcompass.world.layout import sample_layout
from segcompass.world.query import resolve
from segcompass.world.render import render_layout
from segcompass.world.sampler import sample_query
from segcompass.world.scene import Scene, WorldSample
from segcompass.world.vocab import KINDS

logger = logging.getLogger(__name__)

_SCENE_TRIES = 50


def _draw_kind(config: WorldConfig, rng: np.random.Generator) -> str:
    kinds = [k for k in KINDS if config.kind_weights.get(k, 0) > 0]
    weights = np.asarray([config.kind_weights[k] for k in kinds], dtype=float)
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]


def generate_sample(
    config: WorldConfig, split: str = "train", index: int = 0, seed: int | None = None
) -> WorldSample:
    """Sample `index` of `split` (optionally with a custom split `seed`, which must not be another split's).

    The instruction kind is drawn first, then scenes are drawn until one admits a clear query of that kind,
    so kinds follow `config.kind_weights` exactly in expectation.
    """
    rng = sample_rng(config, split, index, seed)
    kind = _draw_kind(config, rng)
    for attempt in range(_SCENE_TRIES):
        layout = sample_layout(config, rng)
        found = sample_query(kind, layout.objects, layout.width, layout.height, rng)
        if found is not None:
            break
        logger.debug("sample %s-%d: scene %d admits no %s query; redrawing", split, index, attempt, kind)
    else:
        raise RuntimeError(
            f"no scene admitting a {kind!r} query after {_SCENE_TRIES} tries ({split}, {index})"
        )
    query, res = found
    image, background = render_layout(config, rng, layout)
    masks = layout.visible_masks()
    w, h = layout.width, layout.height
    visible_fraction = [float(m.sum()) / f.sum() for m, f in zip(layout.visible, layout.full, strict=True)]
    return WorldSample(
        sample_id=f"{split}-{index:06d}",
        split=split,
        index=index,
        image=image,
        scene=Scene(width=w, height=h, objects=list(layout.objects), background=background),
        masks=masks,
        instruction=realise(query, rng),
        kind=kind,
        target_ids=list(res.target_ids),
        reasoning=reasoning_text(query, res, layout.objects, w, h),
        description=describe_scene(layout.objects, visible_fraction, background, w, h),
        query=query,
    )


def generate_split(
    config: WorldConfig, split: str, n: int, start: int = 0, seed: int | None = None
) -> Iterator[WorldSample]:
    """Samples `start .. start + n - 1` of `split`, lazily."""
    resolve_split_seed(config, split, seed)  # fail early on an unknown split or a seed clash
    for index in range(start, start + n):
        yield generate_sample(config, split, index, seed)


def with_listing_order(sample: WorldSample, order: str) -> WorldSample:
    """`sample` with its reasoning's object listings in `order` (`language.LISTING_ORDERS`); the rest as it is.

    The world writes them in paint order ("paint"), which the image shows only where objects overlap; a model
    taught to list in "reading" order can follow the image instead."""
    if order == "paint":
        return sample
    if sample.query is None:
        raise ValueError(f"sample {sample.sample_id} carries no query: its reasoning cannot be relisted")
    scene = sample.scene
    res = resolve(sample.query, scene.objects, scene.width, scene.height)  # type: ignore[arg-type]
    if res is None or sorted(res.target_ids) != sorted(sample.target_ids):
        raise ValueError(f"sample {sample.sample_id}: its query no longer resolves to its targets")
    text = reasoning_text(sample.query, res, scene.objects, scene.width, scene.height, order)  # type: ignore[arg-type]
    return dataclasses.replace(sample, reasoning=text)
