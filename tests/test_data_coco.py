"""COCO-based loaders on hand-written fixtures mirroring the public files' fields (docs/design.md §6)."""

from __future__ import annotations

import inspect
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segcompass.data import (
    DatasetFormatError,
    GRefCocoDataset,
    HFRowsDataset,
    InvalidGeometryError,
    MissingImageError,
    RefCocoDataset,
    RefDataset,
    UnknownSplitError,
    available_datasets,
    build_dataset,
    convert_refer_pickle,
    register_dataset,
)

H, W = 4, 6


def px(*pixels: tuple[int, int]) -> np.ndarray:
    out = np.zeros((H, W), dtype=bool)
    for r, c in pixels:
        out[r, c] = True
    return out


SQUARE = px((1, 1), (1, 2), (2, 1), (2, 2))  # polygon (1,1)-(3,3): pixel squares [1,3) x [1,3)
BOX = px((0, 4), (0, 5), (1, 4), (1, 5))  # box [x 4, y 0, w 2, h 2]
ROW3 = px(*[(3, c) for c in range(W)])


def _sent(text: str, sent_id: int) -> dict:
    return {"raw": text.capitalize(), "sent": text, "sent_id": sent_id, "tokens": text.split()}


def _rle_str(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (W, H), (90, 20, 20)).save(tmp_path / "images" / "COCO_train2014_000000000001.jpg")
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": H, "width": W},  # no file
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]],
                "iscrowd": 0,
            },
            # a box part (4 numbers) plus an invalid part (5 numbers)
            {
                "id": 11,
                "image_id": 1,
                "category_id": 2,
                "segmentation": [[4, 0, 2, 2], [0, 0, 1, 1, 2]],
                "iscrowd": 0,
            },
            {"id": 12, "image_id": 1, "category_id": 1, "segmentation": _rle_str(ROW3), "iscrowd": 0},
            {
                "id": 13,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[0, 0, 1, 1, 2, 2, 3]],
                "iscrowd": 0,
            },
            {
                "id": 20,
                "image_id": 2,
                "category_id": 1,
                "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]],
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    grefs = [
        {"ref_id": 0, "image_id": 1, "ann_id": [10, 11], "category_id": [1, 2], "split": "val",
         "sentences": [_sent("both things", 0), _sent("the two", 1)], "sent_ids": [0, 1], "no_target": False,
         "file_name": "COCO_train2014_000000000001_10.jpg"},
        {"ref_id": 1, "image_id": 1, "ann_id": [-1], "category_id": [-1], "split": "val",
         "sentences": [_sent("the purple cow", 2)], "sent_ids": [2], "no_target": True},
        {"ref_id": 2, "image_id": 1, "ann_id": [12], "category_id": [1], "split": "testA",
         "sentences": [_sent("bottom row", 3)], "sent_ids": [3], "no_target": False},
        {"ref_id": 3, "image_id": 1, "ann_id": [13], "category_id": [1], "split": "val",
         "sentences": [_sent("broken", 4)], "sent_ids": [4]},
        {"ref_id": 4, "image_id": 2, "ann_id": [20], "category_id": [1], "split": "val",
         "sentences": [_sent("missing image", 5)], "sent_ids": [5]},
        {"ref_id": 5, "image_id": 1, "ann_id": [10], "category_id": [1], "split": "val",
         "sentences": [_sent("flag contradicts ids", 6)], "sent_ids": [6], "no_target": True},
    ]  # fmt: skip
    (tmp_path / "grefs(unc).json").write_text(json.dumps(grefs))
    refs = [
        {"ref_id": 7, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1, "sent_ids": [0, 1],
         "sentences": [_sent("left square", 0), _sent("square thing", 1)], "file_name": "x_10.jpg"},
        {"ref_id": 8, "ann_id": 12, "image_id": 1, "split": "testB", "category_id": 1, "sent_ids": [2],
         "sentences": [_sent("bottom", 2)], "file_name": "x_12.jpg"},
        {"ref_id": 9, "ann_id": 20, "image_id": 2, "split": "testB", "category_id": 1, "sent_ids": [3],
         "sentences": [_sent("gone", 3)], "file_name": "x_20.jpg"},
    ]  # fmt: skip
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return tmp_path


def _grefs(root: Path, split: str, **kw: object) -> GRefCocoDataset:
    return GRefCocoDataset(root / "grefs(unc).json", root / "instances.json", root / "images", split, **kw)  # type: ignore[arg-type]


def test_grefcoco_multi_target_no_target_and_counted_skips(coco: Path) -> None:
    ds = _grefs(coco, "val", skip_missing=True)
    assert len(ds) == 3  # ref 0 (two sentences) + ref 1
    a, b, c = list(ds)
    assert (a.text, a.texts, a.text_index) == ("both things", ["both things", "the two"], 0)
    assert b.text == "the two" and b.sample_id == "grefcoco/val/ref0/sent1"
    assert a.image_size == (H, W) and a.image_path.name == "COCO_train2014_000000000001.jpg"
    assert len(a.masks) == 2 and (a.masks[0] == SQUARE).all() and (a.masks[1] == BOX).all()
    assert (a.union_mask() == (SQUARE | BOX)).all() and a.stacked_masks().shape == (2, H, W)
    assert not a.no_target and a.meta["ann_ids"] == [10, 11] and a.ignore is None
    assert c.no_target and c.masks == [] and c.stacked_masks().shape == (0, H, W) and not c.union_mask().any()
    assert dict(ds.skipped) == {
        "invalid_part": 2,
        "unusable_instance": 1,
        "missing_image": 1,
        "bad_ann_id": 1,
    }
    assert dict(ds.notes) == {"box_part": 1}
    assert "skipped: bad_ann_id=1, invalid_part=2" in ds.report()
    rle = _grefs(coco, "testA")[0]
    assert (rle.masks[0] == ROW3).all()


def test_grefcoco_bad_input_is_an_error(coco: Path) -> None:
    with pytest.raises(UnknownSplitError, match="valid splits: testA, val"):
        _grefs(coco, "train")
    with pytest.raises(MissingImageError, match=r"1 refs .*COCO_train2014_000000000002.jpg.*skip_missing"):
        _grefs(coco, "val")
    with pytest.raises(InvalidGeometryError, match="annotation 11: part 1 has 5 numbers"):
        _grefs(coco, "val", skip_missing=True, strict=True)


def test_refer_pickle_only_from_the_named_path_then_json(coco: Path) -> None:
    args = (coco / "instances.json", coco / "images")
    # the API has no data-set root to search: refs come from a file the caller names, pickles only as refs_pickle
    params = inspect.signature(RefCocoDataset).parameters
    assert "refs_pickle" in params and params["refs_pickle"].default is None and "root" not in params
    with pytest.raises(ValueError, match="exactly one of refs_json"):
        RefCocoDataset(None, *args, split="val")
    with pytest.raises(DatasetFormatError, match=r"is a pickle.*refs_pickle"):
        RefCocoDataset(coco / "refs(unc).p", *args, split="val")
    renamed = coco / "refs.json"
    renamed.write_bytes((coco / "refs(unc).p").read_bytes())  # a pickle under a JSON name is refused too
    with pytest.raises(DatasetFormatError, match="is a pickle"):
        RefCocoDataset(renamed, *args, split="val")
    from_pickle = RefCocoDataset(None, *args, split="val", refs_pickle=coco / "refs(unc).p")
    out = convert_refer_pickle(coco / "refs(unc).p", coco / "refs(unc).json")
    ds = RefCocoDataset(out, *args, split="val")
    assert [s.text for s in ds] == [s.text for s in from_pickle] == ["left square", "square thing"]
    assert ds[0].sample_id == "refcoco/val/ref7/sent0" and (ds[1].masks[0] == SQUARE).all()
    assert RefCocoDataset(out, *args, split="val", text_field="raw")[0].text == "Left square"


def test_refer_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.p"
    path.write_bytes(pickle.dumps([OrderedDict(ref_id=1)], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load collections\.OrderedDict"):
        convert_refer_pickle(path, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_refcoco_splits_and_missing_image(coco: Path) -> None:
    args = (coco / "refs(unc).json", coco / "instances.json", coco / "images")
    convert_refer_pickle(coco / "refs(unc).p", args[0])
    with pytest.raises(UnknownSplitError, match="valid splits: train, val, testA, testB"):
        RefCocoDataset(*args, split="testC")
    with pytest.raises(UnknownSplitError, match=r"valid splits: train, val, test$"):
        RefCocoDataset(*args, split="testA", variant="refcocog")
    with pytest.raises(MissingImageError):
        RefCocoDataset(*args, split="testB", variant="refcoco+")
    ds = RefCocoDataset(*args, split="testB", variant="refcoco+", skip_missing=True)
    assert len(ds) == 1 and ds.skipped["missing_image"] == 1 and ds[0].source == "refcoco+"
    with pytest.raises(ValueError, match="unknown RefCOCO variant"):
        RefCocoDataset(*args, split="val", variant="refclef")


def _hf_rows(coco: Path) -> list[dict]:
    ann = {"id": 10, "image_id": 1, "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]], "bbox": [1, 1, 2, 2]}
    info = {"id": 1, "height": H, "width": W, "file_name": "COCO_train2014_000000000001.jpg"}
    base = {"image_id": 1, "category_id": 1, "raw_image_info": json.dumps(info)}
    return [
        {**base, "ref_id": 7, "ann_id": 10, "split": "val", "captions": ["left square", "square thing"],
         "image_path": "coco/train2014/COCO_train2014_000000000001.jpg", "raw_anns": json.dumps(ann),
         "bbox": [1.0, 1.0, 2.0, 2.0]},
        {**base, "ref_id": 8, "ann_id": 11, "split": "testA", "captions": ["top right"],
         "image_path": "coco/train2014/COCO_train2014_000000000001.jpg",
         "raw_anns": json.dumps({"id": 11, "bbox": [4, 0, 2, 2]}), "bbox": [4.0, 0.0, 2.0, 2.0]},
    ]  # fmt: skip


def test_hugging_face_rows_parquet_and_jsonl(coco: Path) -> None:
    (coco / "coco" / "train2014").mkdir(parents=True)
    (coco / "images" / "COCO_train2014_000000000001.jpg").rename(
        coco / "coco" / "train2014" / "COCO_train2014_000000000001.jpg"
    )
    rows = _hf_rows(coco)
    pd.DataFrame(rows).to_parquet(coco / "val.parquet")
    pd.DataFrame(rows).to_json(coco / "val.jsonl", orient="records", lines=True)
    for f in ("val.parquet", "val.jsonl"):
        ds = HFRowsDataset(coco / f, coco, split="val")
        assert [s.text for s in ds] == ["left square", "square thing"]
        assert (
            (ds[0].masks[0] == SQUARE).all() and ds[1].text_index == 1 and ds[0].texts == rows[0]["captions"]
        )
    all_rows = HFRowsDataset(coco / "val.parquet", coco)
    assert len(all_rows) == 2 and all_rows.skipped["no_segmentation"] == 1
    boxed = HFRowsDataset(coco / "val.parquet", coco, split="testA", bbox_fallback=True)
    assert (boxed[0].masks[0] == BOX).all() and boxed.notes["bbox_as_mask"] == 1
    with pytest.raises(UnknownSplitError, match="valid splits: testA, val"):
        HFRowsDataset(coco / "val.parquet", coco, split="validation")
    with pytest.raises(MissingImageError):
        HFRowsDataset(coco / "val.parquet", coco / "nowhere", split="val")


def test_registry_builds_builtins_and_user_sets(coco: Path) -> None:
    assert {"refcoco", "refcoco+", "refcocog", "grefcoco", "reasonseg", "hf_rows"} <= set(
        available_datasets()
    )
    ds = build_dataset(
        "grefcoco", refs_json=coco / "grefs(unc).json", instances_json=coco / "instances.json",
        images_dir=coco / "images", split="testA",
    )  # fmt: skip
    assert len(ds) == 1

    class Tiny(RefDataset):
        source, split = "tiny", "val"

        def __len__(self) -> int:
            return 0

        def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
            raise IndexError(index)

    register_dataset("tiny_test_set", Tiny, overwrite=True)
    assert len(build_dataset("tiny_test_set")) == 0
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("tiny_test_set", Tiny)
    with pytest.raises(KeyError, match="unknown data set 'nope'"):
        build_dataset("nope")
    register_dataset("not_a_set", lambda: [], overwrite=True)
    with pytest.raises(TypeError, match="not a RefDataset"):
        build_dataset("not_a_set")
