"""ReasonSeg loader on hand-written labelme-style fixtures, and the synthetic world through the same loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcompass.data import (
    GRefCocoDataset,
    InvalidGeometryError,
    MissingImageError,
    ReasonSegDataset,
    UnknownSplitError,
)
from segcompass.world import WorldConfig, generate_sample, write_reasonseg_style, write_refcoco_style

S = 8


def _shape(label: str, points: list[list[float]]) -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}


def _write(folder: Path, name: str, meta: dict, image: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        Image.new("RGB", (S, S), (10, 120, 10)).save(folder / f"{name}.jpg")
    (folder / f"{name}.json").write_text(json.dumps(meta))


@pytest.fixture
def reasonseg(tmp_path: Path) -> Path:
    val = tmp_path / "val"
    full = [[0, 0], [7, 0], [7, 7], [0, 7]]
    small = [[2, 2], [4, 2], [4, 4], [2, 4]]
    # the ignore square comes first in the file: drawn in file order the target would cover it
    _write(val, "x1", {"text": ["what is it?", "second phrasing"], "is_sentence": True,
                       "shapes": [_shape("ignore", small), _shape("flag", small), _shape("target", full)]})  # fmt: skip
    _write(val, "x2", {"text": ["nothing here"], "is_sentence": False, "shapes": []})
    _write(val, "x3", {"text": ["bad"], "is_sentence": False, "shapes": [_shape("target", [[0, 0], [3, 3]])]})
    truncated = [[0.9, 0.9], [3.7, 0.9], [3.7, 3.7], [0.9, 3.7]]  # -> (0,0)-(3,3) after int()
    _write(val, "x4", {"text": ["one text"], "is_sentence": False,
                       "shapes": [_shape("target", truncated), _shape("ignore", [[5, 5], [6, 6]])]})  # fmt: skip
    _write(
        val,
        "x5",
        {"text": ["no image"], "is_sentence": False, "shapes": [_shape("target", full)]},
        image=False,
    )
    return tmp_path


def test_reasonseg_fill_order_ignore_texts_and_counted_skips(reasonseg: Path) -> None:
    ds = ReasonSegDataset(reasonseg, "val", skip_missing=True)
    assert [s.meta["name"] for s in ds] == ["x1", "x2", "x4"]
    x1, x2, x4 = list(ds)
    ignore = np.zeros((S, S), dtype=bool)
    ignore[2:5, 2:5] = True  # the 3x3 square wins over the full-image target (largest drawn first)
    assert (x1.ignore == ignore).all()
    assert (x1.masks[0] == ~ignore).all() and x1.masks[0].sum() == 64 - 9
    assert (x1.text, x1.texts, x1.text_index, x1.is_sentence) == (
        "what is it?", ["what is it?", "second phrasing"], 0, True,
    )  # fmt: skip
    assert x2.no_target and x2.masks == [] and not x2.ignore.any() and x2.is_sentence is False
    box = np.zeros((S, S), dtype=bool)
    box[0:4, 0:4] = True
    assert (x4.masks[0] == box).all() and not x4.ignore.any()
    assert dict(ds.skipped) == {"invalid_polygon": 2, "no_valid_target_polygon": 1, "missing_image": 1}
    assert dict(ds.notes) == {"no_target_polygons": 1}
    assert x1.sample_id == "reasonseg/val/x1" and x1.image_size == (S, S)


def test_reasonseg_options_and_errors(reasonseg: Path) -> None:
    second = ReasonSegDataset(reasonseg, "val", text_index=1, skip_missing=True)
    assert [s.text for s in second] == [
        "second phrasing",
        "nothing here",
        "one text",
    ]  # clamped for 1-text files
    no_empty = ReasonSegDataset(reasonseg, "val", skip_missing=True, empty_shapes="skip")
    assert len(no_empty) == 2 and no_empty.skipped["no_target_polygons"] == 1
    with pytest.raises(MissingImageError, match=r"1 ReasonSeg files .*x5\.jpg"):
        ReasonSegDataset(reasonseg, "val")
    with pytest.raises(InvalidGeometryError, match="at least 3"):
        ReasonSegDataset(reasonseg, "val", skip_missing=True, strict=True)
    with pytest.raises(UnknownSplitError, match="valid splits: val"):
        ReasonSegDataset(reasonseg, "test")


def test_sam_targets_reuse_head_preprocessing(reasonseg: Path) -> None:
    x1 = ReasonSegDataset(reasonseg, "val", skip_missing=True)[0]
    masks, ignore = x1.sam_targets()
    assert masks.shape == (1, 256, 256) and ignore is not None and ignore.shape == (256, 256)
    scale = (256 / S) ** 2  # an 8x8 image fills the whole 256^2 frame
    assert ignore.sum().item() == pytest.approx(9 * scale, rel=0.1)
    assert masks.sum().item() == pytest.approx(55 * scale, rel=0.1)


WORLD = WorldConfig(kind_weights={"plain": 1.0, "multi": 1.0, "no_target": 1.0})


def test_synthetic_world_loads_through_the_grefcoco_loader(tmp_path: Path) -> None:
    paths = write_refcoco_style(tmp_path, WORLD, {"val": 8})
    ds = GRefCocoDataset(paths["refs"], paths["instances"], paths["images"], "val", text_field="raw")
    assert len(ds) == 8 and not ds.skipped
    kinds = set()
    for s in ds:
        index = int(s.image_path.stem.split("-")[1])
        truth = generate_sample(WORLD, "val", index)
        assert s.text == truth.instruction and s.no_target == (not truth.target_ids)
        assert len(s.masks) == len(truth.target_ids)
        for mask, t in zip(s.masks, truth.target_ids, strict=True):
            assert (mask == truth.masks[t]).all()
        kinds.add(s.meta["kind"])
    assert {"multi", "no_target"} <= kinds
    lowered = GRefCocoDataset(paths["refs"], paths["instances"], paths["images"], "val")
    assert lowered[0].text == lowered[0].text.lower()


def test_synthetic_world_loads_through_the_reasonseg_loader(tmp_path: Path) -> None:
    write_reasonseg_style(tmp_path, WORLD, {"val": 8})
    ds = ReasonSegDataset(tmp_path, "val")
    assert len(ds) == 8 and not ds.skipped
    for s in ds:
        truth = generate_sample(WORLD, "val", int(s.meta["name"].split("-")[1]))
        assert s.text == truth.instruction and s.no_target == (not truth.target_ids)
        if truth.target_ids:
            gt = truth.target_mask
            assert (s.masks[0] & gt).sum() / (s.masks[0] | gt).sum() > 0.9
    assert ds.notes["no_target_polygons"] == sum(s.no_target for s in ds) > 0
