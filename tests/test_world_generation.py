"""Synthetic world: geometry of masks, determinism, splits and seeds, kinds, image variety."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from segcompass.world import (
    KINDS,
    Scene,
    SceneObject,
    WorldConfig,
    WorldSample,
    generate_sample,
    generate_split,
)
from segcompass.world.config import sample_rng
from segcompass.world.generate import _draw_kind, with_listing_order
from segcompass.world.language import reasoning_text
from segcompass.world.query import Descriptor, Query, resolve
from segcompass.world.shapes import bounding_box, rasterize

N_SAMPLES = 120


@pytest.fixture(scope="module")
def samples() -> list[WorldSample]:
    return list(generate_split(WorldConfig(), "train", N_SAMPLES))


def _full_mask(obj: SceneObject, width: int, height: int) -> np.ndarray:
    """The object's unoccluded shape, rasterised afresh from its analytic parameters."""
    box = bounding_box(obj.shape, obj.cx, obj.cy, obj.scale, width, height)
    full = np.zeros((height, width), dtype=bool)
    full[box[1] : box[3], box[0] : box[2]] = rasterize(obj.shape, obj.cx, obj.cy, obj.scale, box)
    return full


def test_public_contract(samples: list[WorldSample]) -> None:
    s = samples[0]
    assert isinstance(s.image, Image.Image) and s.image.mode == "RGB"
    assert isinstance(s.scene, Scene)
    assert s.image.size == (s.scene.width, s.scene.height)
    assert s.masks.dtype == bool and s.masks.shape == (len(s.scene.objects), s.scene.height, s.scene.width)
    assert s.sample_id == "train-000000"
    assert s.kind in KINDS
    assert all(0 <= t < len(s.scene.objects) for t in s.target_ids)
    assert [o.id for o in s.scene.objects] == list(range(len(s.scene.objects)))
    assert s.instruction and s.reasoning and s.description and s.scene.background


def test_object_counts_and_visibility(samples: list[WorldSample]) -> None:
    counts = Counter(len(s.scene.objects) for s in samples)
    assert min(counts) >= 2 and max(counts) <= 8
    assert len(counts) >= 5  # many different scene sizes
    for s in samples:
        visible = s.masks.sum(axis=(1, 2))
        areas = np.asarray([o.area for o in s.scene.objects])
        assert (visible >= 0.5 * 0.95 * areas).all(), "every object keeps about half its area visible"


def test_visible_masks_are_disjoint_and_match_analytic_shapes(samples: list[WorldSample]) -> None:
    n_unoccluded = 0
    for s in samples:
        w, h = s.scene.width, s.scene.height
        assert s.masks.sum(axis=0).max() <= 1, "visible masks overlap"
        fulls = [_full_mask(o, w, h) for o in s.scene.objects]
        for o, full, vis in zip(s.scene.objects, fulls, s.masks, strict=True):
            above = [f for p, f in zip(s.scene.objects, fulls, strict=True) if p.z > o.z]
            hidden = np.any(above, axis=0) if above else np.zeros_like(full)
            assert np.array_equal(vis, full & ~hidden), "visible mask != shape minus the shapes above it"
            if not (full & hidden).any():
                n_unoccluded += 1
                tolerance = 0.03 * o.area + 2.0 * math.sqrt(o.area)
                assert abs(int(vis.sum()) - o.area) <= tolerance, (o.shape, int(vis.sum()), o.area)
    assert n_unoccluded > 100


def test_objects_span_image_tokens(samples: list[WorldSample]) -> None:
    """At the tiny backbones' 112 px rescale with 28 px cells (4 x 4), objects cover about a cell or more."""
    cell_fraction = []
    for s in samples:
        cell_area = s.scene.width * s.scene.height / 16
        cell_fraction += [o.area / cell_area for o in s.scene.objects]
    frac = np.asarray(cell_fraction)
    assert frac.min() >= 0.9
    assert np.median(frac) >= 1.5  # mostly medium / large objects
    assert (frac >= 1.5).mean() >= 0.4


def test_images_vary_in_size_and_aspect(samples: list[WorldSample]) -> None:
    sizes = {s.image.size for s in samples}
    aspects = np.asarray([w / h for w, h in sizes])
    assert len(sizes) > 50
    assert all(160 <= v <= 320 for size in sizes for v in size)
    assert aspects.min() < 0.8 and aspects.max() > 1.25


def test_instruction_kind_proportions(samples: list[WorldSample]) -> None:
    cfg = WorldConfig()
    n = 3000  # the kind is the first draw of a sample's generator: count many draws cheaply
    counts = Counter(_draw_kind(cfg, sample_rng(cfg, "val", i)) for i in range(n))
    total = sum(cfg.kind_weights.values())
    for kind, weight in cfg.kind_weights.items():
        p = weight / total
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[kind] - n * p) <= 4 * sigma, (kind, counts[kind], n * p)
    # ... and the generated samples carry exactly the drawn kind
    assert [s.kind for s in samples] == [
        _draw_kind(cfg, sample_rng(cfg, "train", i)) for i in range(N_SAMPLES)
    ]
    assert set(Counter(s.kind for s in samples)) == set(KINDS)
    only = WorldConfig(kind_weights={"multi": 1.0})
    assert {generate_sample(only, "train", i).kind for i in range(5)} == {"multi"}


def test_kinds_match_target_counts(samples: list[WorldSample]) -> None:
    for s in samples:
        if s.kind == "no_target":
            assert s.target_ids == [] and not s.target_mask.any()
        elif s.kind == "multi":
            assert len(s.target_ids) >= 2
        else:
            assert len(s.target_ids) == 1
        if s.target_ids:
            assert s.target_mask.any()


def test_same_seed_same_sample_and_splits_differ() -> None:
    cfg = WorldConfig()
    a, b = generate_sample(cfg, "train", 7), generate_sample(WorldConfig(), "train", 7)
    assert np.asarray(a.image).tobytes() == np.asarray(b.image).tobytes()
    assert (a.instruction, a.reasoning, a.description, a.target_ids) == (
        b.instruction,
        b.reasoning,
        b.description,
        b.target_ids,
    )
    assert np.array_equal(a.masks, b.masks)
    train = {np.asarray(s.image).tobytes() for s in generate_split(cfg, "train", 30)}
    val = {np.asarray(s.image).tobytes() for s in generate_split(cfg, "val", 30)}
    assert len(train) == 30 and not train & val
    other_base = generate_sample(WorldConfig(seed=1), "train", 7)
    assert np.asarray(other_base.image).tobytes() != np.asarray(a.image).tobytes()


def test_seed_split_clashes_raise() -> None:
    with pytest.raises(ValueError, match=r"clash.*'train'.*'val'"):
        WorldConfig(split_seeds={"train": 0, "val": 0})
    cfg = WorldConfig()
    with pytest.raises(ValueError, match=r"seed 1 .*split 'val'"):
        generate_sample(cfg, "extra", 0, seed=1)
    with pytest.raises(ValueError, match="clash"):
        next(generate_split(cfg, "test", 1, seed=0))
    with pytest.raises(ValueError, match="unknown split"):
        generate_sample(cfg, "holdout", 0)
    extra = generate_sample(cfg, "holdout", 0, seed=99)  # a fresh seed is fine
    assert extra.sample_id == "holdout-000000"


def test_plain_world_is_plain() -> None:
    s = generate_sample(WorldConfig(plain=True), "train", 3)
    pixels = np.asarray(s.image).reshape(-1, 3)
    background = pixels[~s.masks.any(axis=0).ravel()]
    assert len(np.unique(background, axis=0)) == 1
    default = generate_sample(WorldConfig(), "train", 3)
    bg_default = np.asarray(default.image).reshape(-1, 3)[~default.masks.any(axis=0).ravel()]
    assert len(np.unique(bg_default, axis=0)) > 1000


def _listing_obj(i: int, shape: str, colour: str, size: str, cx: float, cy: float) -> SceneObject:
    return SceneObject(i, shape, colour, size, cx, cy, 10.0, 10.0, 300.0, i, (0, 0, 0))


def test_reasoning_lists_in_reading_order_when_asked() -> None:
    """Painted bottom right, top left, then top right: the world's reasoning lists the diamonds in that order,
    "reading" lists them top row left to right, then the bottom row."""
    objects = [
        _listing_obj(0, "diamond", "red", "small", 170, 170),
        _listing_obj(1, "diamond", "blue", "large", 20, 20),
        _listing_obj(2, "diamond", "green", "medium", 180, 30),
        _listing_obj(3, "circle", "red", "small", 100, 100),
    ]
    query = Query("attribute", Descriptor(shape="diamond"), superlative="largest")
    res = resolve(query, objects, 200, 200)
    assert res is not None and res.target_ids == [1]
    tail = (
        " The largest of them is the large blue diamond at the top left."
        " So the target is the large blue diamond at the top left."
    )
    painted = "the small red diamond at the bottom right, the large blue diamond at the top left"
    assert reasoning_text(query, res, objects, 200, 200) == (
        f"Diamonds: {painted} and the medium green diamond at the top right.{tail}"
    )
    read = "the large blue diamond at the top left, the medium green diamond at the top right"
    assert reasoning_text(query, res, objects, 200, 200, "reading") == (
        f"Diamonds: {read} and the small red diamond at the bottom right.{tail}"
    )
    with pytest.raises(ValueError, match="order must be one of"):
        reasoning_text(query, res, objects, 200, 200, "size")


def test_relisting_a_sample_changes_only_the_order_of_its_listings(samples: list[WorldSample]) -> None:
    reordered = 0
    for s in samples:
        assert with_listing_order(s, "paint") is s
        read = with_listing_order(s, "reading")
        assert dataclasses.replace(read, reasoning=s.reasoning) == s
        # the same sentences, each listing the same objects; the conclusion untouched
        old, new = s.reasoning.split(". "), read.reasoning.split(". ")
        assert len(old) == len(new) and old[-1] == new[-1]
        for a, b in zip(old, new, strict=True):
            assert a.split(": ")[0] == b.split(": ")[0]
            assert sorted(re.split(r", | and ", a.split(": ")[-1])) == sorted(
                re.split(r", | and ", b.split(": ")[-1])
            )
        reordered += read.reasoning != s.reasoning
    assert reordered > len(samples) // 5  # the paint order often differs from the reading order
    no_query = dataclasses.replace(samples[0], query=None)
    with pytest.raises(ValueError, match="carries no query"):
        with_listing_order(no_query, "reading")
