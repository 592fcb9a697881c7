"""The loaders on files laid out exactly like the public releases, with real-world images and encodings.

Each format gets a hand-written file with the public set's field layout — RefCOCO's refs pickle + COCO
``instances.json`` (info, licenses, images with coco_url / flickr_url, annotations with area / bbox /
iscrowd), gRefCOCO's ``grefs(unc).json``, a ReasonSeg folder of labelme-style JSON, and the Hugging Face
RefCOCO rows (``jxu124/refcoco`` columns) — over photographs stored rotated with an EXIF Orientation tag
(3, 6, 8), a grayscale JPEG, and annotation files that are not UTF-8.

The expected masks are written down here as pixel slices of the *upright* picture (see
``_image_fixtures``); they never go through a loader, pycocotools or the polygon filler, so a loader that
misreads a file fails both the direct comparison and the evaluation of a predictor that returns them.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _image_fixtures import GREEN, RED, YELLOW, looks_upright, save_oriented, upright
from PIL import Image

from segcompass.data import (
    DatasetFormatError,
    GRefCocoDataset,
    HFRowsDataset,
    ReasonSegDataset,
    RefCocoDataset,
    RefSample,
)
from segcompass.evaluation import EvalConfig, Prediction, evaluate
from segcompass.evaluation.frames import image_to_head_frame

H, W = 40, 64  # the upright photograph (displayed frame)
GH, GW = 30, 50  # the grayscale photograph
ROTATED = "COCO_train2014_000000581857.jpg"  # stored with EXIF orientation 6 (a portrait phone shot)
GRAY = "COCO_train2014_000000000009.jpg"  # a grayscale JPEG, as some COCO images are


def region(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    out = np.zeros((h, w), dtype=bool)
    out[rows, cols] = True
    return out


# Independent truth: which pixels of the upright picture each annotation covers.
RED_Q = region(H, W, slice(0, 20), slice(0, 32))
GREEN_Q = region(H, W, slice(0, 20), slice(32, 64))
YELLOW_Q = region(H, W, slice(20, 40), slice(32, 64))
STRIPE = region(GH, GW, slice(None), slice(10, 20))  # the grayscale image's crowd RLE


def _sentence(raw: str, sent_id: int) -> dict:
    sent = raw.lower()
    return {"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent}


def _instances() -> dict:
    """COCO ``instances.json`` of the refer toolkit, every field of the public file."""

    def image(id_: int, name: str, h: int, w: int) -> dict:
        return {
            "license": 1,
            "file_name": name,
            "coco_url": f"http://mscoco.org/images/{id_}",
            "height": h,
            "width": w,
            "date_captured": "2013-11-14 16:28:13",
            "flickr_url": f"http://farm4.staticflickr.com/{id_}.jpg",
            "id": id_,
        }

    def ann(id_: int, image_id: int, seg, bbox: list[float], area: float, crowd: int = 0) -> dict:
        return {
            "segmentation": seg,
            "area": area,
            "iscrowd": crowd,
            "image_id": image_id,
            "bbox": bbox,
            "category_id": 1,
            "id": id_,
        }

    # polygons in the upright frame; pycocotools covers [x0, x1) × [y0, y1) of an integer rectangle
    red = [[0.0, 0.0, 32.0, 0.0, 32.0, 20.0, 0.0, 20.0]]
    yellow = [[32.0, 20.0, 64.0, 20.0, 64.0, 40.0, 32.0, 40.0]]
    stripe = {"size": [GH, GW], "counts": [10 * GH, 10 * GH, 30 * GH]}  # column-major runs: 0s, 1s, 0s
    return {
        "info": {"description": "This is stable 1.0 version of the 2014 MS COCO dataset.", "year": 2014},
        "images": [image(581857, ROTATED, H, W), image(9, GRAY, GH, GW)],
        "licenses": [
            {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "BY-NC-SA"}
        ],
        "annotations": [
            ann(1719310, 581857, red, [0.0, 0.0, 32.0, 20.0], 640.0),
            ann(1719311, 581857, yellow, [32.0, 20.0, 32.0, 20.0], 640.0),
            ann(2000001, 9, stripe, [10.0, 0.0, 10.0, 30.0], 300.0, crowd=1),
        ],
        "categories": [{"supercategory": "person", "id": 1, "name": "person"}],
    }


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("public")
    images = root / "train2014"
    images.mkdir()
    save_oriented(images / ROTATED, upright(H, W), orientation=6)
    gray = np.full((GH, GW), 60, dtype=np.uint8)
    gray[:, 10:20] = 230
    Image.fromarray(gray, mode="L").save(images / GRAY, quality=95)
    (root / "instances.json").write_text(json.dumps(_instances()))

    refs = [  # refs(unc).p: a pickled list, the refer toolkit's field order
        {"sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_1719310.jpg", "ann_id": 1719310,
         "ref_id": 0, "image_id": 581857, "split": "val",
         "sentences": [_sentence("THE RED BLOCK", 0), _sentence("top left red", 1)], "category_id": 1},
        {"sent_ids": [2], "file_name": "COCO_train2014_000000000009_2000001.jpg", "ann_id": 2000001,
         "ref_id": 1, "image_id": 9, "split": "testA", "sentences": [_sentence("bright stripe", 2)],
         "category_id": 1},
    ]  # fmt: skip
    with open(root / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)

    grefs = [  # grefs(unc).json: ann_id and category_id are lists, [-1] = no target
        {"sent_ids": [10], "file_name": "COCO_train2014_000000581857_1719310.jpg", "ann_id": [1719310, 1719311],
         "ref_id": 10, "image_id": 581857, "split": "val", "sentences": [_sentence("red and yellow", 10)],
         "category_id": [1, 1], "no_target": False},
        {"sent_ids": [11], "file_name": "COCO_train2014_000000581857.jpg", "ann_id": [-1], "ref_id": 11,
         "image_id": 581857, "split": "val", "sentences": [_sentence("the purple cow", 11)],
         "category_id": [-1], "no_target": True},
        {"sent_ids": [12], "file_name": "COCO_train2014_000000000009_2000001.jpg", "ann_id": [2000001],
         "ref_id": 12, "image_id": 9, "split": "val", "sentences": [_sentence("the café’s stripe", 12)],
         "category_id": [1], "no_target": False},
    ]  # fmt: skip
    # written as Windows-1252 (’ and é are single bytes there, invalid UTF-8): read with a warning
    (root / "grefs(unc).json").write_bytes(json.dumps(grefs, ensure_ascii=False).encode("cp1252"))
    return root


def _truth_for(sample: RefSample) -> np.ndarray:
    """The independent union mask of a sample, by its ids (never from the loader's masks)."""
    by_ann = {1719310: RED_Q, 1719311: YELLOW_Q, 2000001: STRIPE}
    if sample.source == "reasonseg":
        return {
            "rot8": GREEN_Q,
            "rot3": RED_Q | YELLOW_Q,
            "gray": region(GH, GW, slice(0, 30), slice(10, 20)),
        }[sample.meta["name"]]
    ann_ids = sample.meta.get("ann_ids") or [sample.meta.get("ann_id")]
    if sample.no_target:
        return np.zeros(sample.image_size, dtype=bool)
    return np.logical_or.reduce([by_ann[int(a)] for a in ann_ids])


class IndependentTruth:
    """A predictor returning the hand-written masks: gIoU 1 only if the loader read the file right."""

    name = "independent_truth"

    def predict(self, samples: list[RefSample]) -> list[Prediction]:
        out = []
        for s in samples:
            truth = _truth_for(s)
            out.append(
                Prediction(
                    s.sample_id,
                    image_to_head_frame(truth[None], 1024),
                    torch.tensor([0.0 if s.no_target else 1.0]),
                )
            )
        return out


def _check_image_and_masks(sample: RefSample, colour: tuple[int, int, int] | None) -> None:
    """The loaded image is the upright picture at `image_size`, and the mask lies on `colour`."""
    image = np.asarray(sample.load_image())
    assert image.shape == (*sample.image_size, 3), (sample.sample_id, image.shape, sample.image_size)
    truth = _truth_for(sample)
    assert np.array_equal(sample.union_mask(), truth), sample.sample_id
    if colour is not None:
        under = np.median(image[truth], axis=0)
        assert np.abs(under - np.asarray(colour)).max() <= 40, (sample.sample_id, under, colour)
    if sample.image_size == (H, W):
        assert looks_upright(image), sample.sample_id


def _all_perfect(ds) -> None:
    res = evaluate(IndependentTruth(), ds, EvalConfig(progress=False, batch_size=4))
    for conv, summary in res.summaries.items():
        assert summary.giou == 1.0 and summary.ciou == 1.0, (conv, summary)


def test_refcoco_pickle_and_instances_on_a_rotated_photograph(public: Path) -> None:
    args = (None, public / "instances.json", public / "train2014")
    val = RefCocoDataset(*args, split="val", refs_pickle=public / "refs(unc).p")
    assert [s.text for s in val] == ["the red block", "top left red"] and not val.skipped
    assert val[0].image_size == (H, W) and val[0].meta["ann_ids"] == [1719310]
    _check_image_and_masks(val[0], RED)
    test_a = RefCocoDataset(*args, split="testA", refs_pickle=public / "refs(unc).p")
    _check_image_and_masks(test_a[0], (230, 230, 230))
    assert test_a[0].load_image().mode == "RGB"  # a grayscale JPEG comes out as RGB
    _all_perfect(val)
    _all_perfect(test_a)


def test_grefcoco_multi_target_no_target_and_a_cp1252_refs_file(public: Path, caplog) -> None:
    ds = GRefCocoDataset(public / "grefs(unc).json", public / "instances.json", public / "train2014", "val")
    assert len(ds) == 3 and not ds.skipped
    multi, none, stripe = list(ds)
    assert len(multi.masks) == 2
    assert np.array_equal(multi.masks[0], RED_Q) and np.array_equal(multi.masks[1], YELLOW_Q)
    _check_image_and_masks(multi, None)
    image = np.asarray(multi.load_image())
    assert np.abs(np.median(image[YELLOW_Q], axis=0) - YELLOW).max() <= 40
    assert none.no_target and none.masks == []
    assert stripe.text == "the café’s stripe"  # decoded from Windows-1252, not mangled
    assert any("not UTF-8" in r.getMessage() for r in caplog.records)
    _all_perfect(ds)


def _labelme(label: str, points: list[list[float]], image_name: str) -> dict:
    """A shape as in the public ReasonSeg JSON (labelme fields)."""
    return {
        "label": label,
        "labels": [label],
        "shape_type": "polygon",
        "image_name": image_name,
        "points": points,
        "group_id": None,
        "group_ids": [None],
        "flags": {},
    }


@pytest.fixture(scope="module")
def reasonseg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reasonseg")
    val = root / "val"
    val.mkdir()
    # labelme polygons in the upright frame; PIL fills the outline too: [x0, x1] × [y0, y1] inclusive
    save_oriented(val / "rot8.jpg", upright(H, W), orientation=8)
    green = [[32.0, 0.0], [63.0, 0.0], [63.0, 19.0], [32.0, 19.0]]
    meta = {"text": ["What’s the colour of the café’s green block?"], "is_sentence": True,
            "shapes": [_labelme("target", green, "rot8.jpg")]}  # fmt: skip
    (val / "rot8.json").write_bytes(json.dumps(meta, ensure_ascii=False).encode("cp1252"))

    save_oriented(val / "rot3.jpg", upright(H, W), orientation=3)
    red = [[0.0, 0.0], [31.0, 0.0], [31.0, 19.0], [0.0, 19.0]]
    yellow = [[32.0, 20.0], [63.0, 20.0], [63.0, 39.0], [32.0, 39.0]]
    meta = {"text": ["the warm colours", "red and yellow"], "is_sentence": False,
            "shapes": [_labelme("target", red, "rot3.jpg"), _labelme("target", yellow, "rot3.jpg")]}  # fmt: skip
    (val / "rot3.json").write_text(json.dumps(meta))

    gray = np.full((GH, GW), 60, dtype=np.uint8)
    gray[:, 10:20] = 230
    Image.fromarray(gray, mode="L").save(val / "gray.jpg", quality=95)
    stripe = [[10.0, 0.0], [19.0, 0.0], [19.0, 29.0], [10.0, 29.0]]
    (val / "gray.json").write_text(json.dumps({"text": ["the stripe"], "is_sentence": False,
                                               "shapes": [_labelme("target", stripe, "gray.jpg")]}))  # fmt: skip

    # unreadable annotations: bytes valid in neither UTF-8 nor Windows-1252 (0x81), and truncated JSON
    Image.fromarray(upright(H, W)).save(val / "undecodable.jpg")
    (val / "undecodable.json").write_bytes(b'{"text": ["caf\xe9 \x81"], "is_sentence": false, "shapes": []}')
    Image.fromarray(upright(H, W)).save(val / "truncated.jpg")
    (val / "truncated.json").write_text('{"text": ["cut off"], "shapes": [')
    (val / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a picture")
    (val / "corrupt.json").write_text(json.dumps({"text": ["x"], "is_sentence": False, "shapes": []}))
    return root


def test_reasonseg_rotated_photos_cp1252_text_and_counted_unreadable_files(reasonseg: Path) -> None:
    ds = ReasonSegDataset(reasonseg, "val")
    assert sorted(s.meta["name"] for s in ds) == ["gray", "rot3", "rot8"]
    assert dict(ds.skipped) == {"unreadable_annotation": 2, "unreadable_image": 1}
    assert ds.notes["annotation_cp1252"] == 1
    by_name = {s.meta["name"]: s for s in ds}
    assert by_name["rot8"].text == "What’s the colour of the café’s green block?"
    assert by_name["rot8"].image_size == (H, W) and by_name["rot3"].image_size == (H, W)
    _check_image_and_masks(by_name["rot8"], GREEN)
    _check_image_and_masks(by_name["rot3"], None)
    image = np.asarray(by_name["rot3"].load_image())
    assert np.abs(np.median(image[RED_Q], axis=0) - RED).max() <= 40
    _check_image_and_masks(by_name["gray"], (230, 230, 230))
    assert "unreadable_annotation=2" in ds.report()
    _all_perfect(ds)


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("undecodable", DatasetFormatError, r"undecodable\.json.*not valid in any of utf-8, cp1252"),
        ("truncated", DatasetFormatError, r"truncated\.json.*not valid JSON"),
        ("corrupt", OSError, r"corrupt\.jpg"),
    ],
)
def test_reasonseg_strict_raises_naming_the_unreadable_file(reasonseg, tmp_path, name, error, match) -> None:
    (tmp_path / "val").mkdir()
    for suffix in (".json", ".jpg"):
        (tmp_path / "val" / f"{name}{suffix}").write_bytes(
            (reasonseg / "val" / f"{name}{suffix}").read_bytes()
        )
    with pytest.raises(error, match=match):
        ReasonSegDataset(tmp_path, "val", strict=True)
    assert len(ReasonSegDataset(tmp_path, "val")) == 0  # without strict: counted, the split still loads


def _hf_rows() -> list[dict]:
    """Rows with the columns of the Hub's ``jxu124/refcoco`` (JSON strings in the raw_* columns)."""
    inst = _instances()
    info = json.dumps(inst["images"][0])
    red_ann = json.dumps(inst["annotations"][0])
    sentences = [_sentence("THE RED BLOCK", 0), _sentence("top left red", 1)]
    base = {
        "sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_1719310.jpg", "ann_id": 1719310,
        "ref_id": 0, "image_id": 581857, "split": "val", "sentences": sentences, "category_id": 1,
        "raw_anns": red_ann, "raw_image_info": info, "raw_sentences": json.dumps(sentences),
        "image_path": f"coco/train2014/{ROTATED}", "bbox": [0.0, 0.0, 32.0, 20.0],
        "captions": ["the red block", "top left red"], "global_image_id": "coco.581857",
        "anns_id": "1719310",
    }  # fmt: skip
    no_info = {**base, "ref_id": 1, "raw_image_info": "{}", "captions": ["red again"], "sent_ids": [5]}
    broken = {**base, "ref_id": 2, "raw_anns": '{"segmentation": [[0, 0, 3', "captions": ["broken"]}
    return [base, no_info, broken]


def test_hugging_face_rows_with_the_hub_columns(public: Path) -> None:
    (public / "coco").mkdir(exist_ok=True)
    if not (public / "coco" / "train2014").exists():
        (public / "coco" / "train2014").symlink_to(public / "train2014")
    rows = _hf_rows()
    pd.DataFrame(rows).to_parquet(public / "refcoco-val.parquet")
    ds = HFRowsDataset(public / "refcoco-val.parquet", public, split="val")
    assert [s.text for s in ds] == ["the red block", "top left red", "red again"]
    assert dict(ds.skipped) == {"bad_field": 1}
    for s in ds:  # the third sample's size comes from the image header: the displayed (upright) size
        assert s.image_size == (H, W)
        assert np.array_equal(s.masks[0], RED_Q)
        _check_image_and_masks(s, RED)
    with pytest.raises(DatasetFormatError, match="raw_anns is not valid JSON"):
        HFRowsDataset(public / "refcoco-val.parquet", public, split="val", strict=True)

    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:1])
    text = text.replace("top left red", "top left red – café")
    (public / "rows-cp1252.jsonl").write_bytes(text.encode("cp1252"))
    cp = HFRowsDataset(public / "rows-cp1252.jsonl", public, split="val")
    assert cp[1].text == "top left red – café"
    (public / "garbage.parquet").write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(DatasetFormatError, match=r"garbage\.parquet"):
        HFRowsDataset(public / "garbage.parquet", public)


def test_an_annotation_for_another_frame_is_a_clear_error(public: Path) -> None:
    """A sample whose annotated size is not the displayed image's size refuses to load its image."""
    ds = RefCocoDataset(
        None, public / "instances.json", public / "train2014", split="val", refs_pickle=public / "refs(unc).p"
    )
    s = ds[0]
    s.image_size = (W, H)  # the stored (sideways) frame
    with pytest.raises(DatasetFormatError, match=r"40x64 \(HxW\) as displayed.*says 64x40"):
        s.load_image()


def test_malformed_entries_are_counted_never_abort_the_split(public: Path, tmp_path: Path) -> None:
    inst = _instances()
    inst["images"].append({"id": "x", "file_name": 3})  # no size, bad id: left out
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    grefs = json.loads((public / "grefs(unc).json").read_bytes().decode("cp1252"))
    grefs.append("not a ref")
    grefs.append({**grefs[0], "ref_id": 99, "image_id": "581857x"})
    (tmp_path / "grefs.json").write_text(json.dumps(grefs))
    ds = GRefCocoDataset(tmp_path / "grefs.json", tmp_path / "instances.json", public / "train2014", "val")
    assert len(ds) == 3 and dict(ds.skipped) == {"bad_ref": 1, "unknown_image_id": 1}
    assert ds.coco.malformed == {"images": 1, "annotations": 0}
    with pytest.raises(DatasetFormatError, match="bad_ref"):
        GRefCocoDataset(
            tmp_path / "grefs.json", tmp_path / "instances.json", public / "train2014", "val", strict=True
        )
