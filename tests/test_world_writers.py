"""On-disk formats: COCO + gRefCOCO, ReasonSeg folders, image-text corpus; byte-level determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segcompass.world import (
    WorldConfig,
    decode_rle,
    generate_sample,
    load_image_text_corpus,
    write_image_text_corpus,
    write_reasonseg_style,
    write_refcoco_style,
)

CFG = WorldConfig(kind_weights={"plain": 1.0, "relational": 1.0, "multi": 1.0, "no_target": 1.5})
SPLITS = {"train": 10, "val": 6}


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def refcoco_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("refcoco")
    write_refcoco_style(out, CFG, SPLITS)
    return out


def test_refcoco_rle_round_trip_from_json(refcoco_dir: Path) -> None:
    instances = json.loads((refcoco_dir / "instances.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert len(instances["images"]) == sum(SPLITS.values())
    for img in instances["images"]:
        split, index = img["file_name"].rsplit(".", 1)[0].split("-")
        sample = generate_sample(CFG, split, int(index))
        anns = sorted(by_image[img["id"]], key=lambda a: a["id"])
        assert len(anns) == len(sample.scene.objects)
        assert (img["width"], img["height"]) == sample.image.size
        with Image.open(refcoco_dir / "images" / img["file_name"]) as im:
            assert im.size == sample.image.size
        for ann, mask in zip(anns, sample.masks, strict=True):
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            decoded = mask_utils.decode(rle).astype(bool)
            assert np.array_equal(decoded, mask)
            assert ann["area"] == int(mask.sum())
            assert ann["bbox"] == [int(v) for v in mask_utils.toBbox(rle)]


def test_coco_api_and_grefs(refcoco_dir: Path) -> None:
    coco = COCO(str(refcoco_dir / "instances.json"))
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} >= {"circle", "square", "triangle"}
    refs = json.loads((refcoco_dir / "grefs(unc).json").read_text())
    assert len(refs) == sum(SPLITS.values())
    assert {r["split"] for r in refs} == set(SPLITS)
    n_empty = 0
    for ref in refs:
        assert isinstance(ref["ann_id"], list) and ref["sentences"][0]["tokens"]
        assert set(ref["sentences"][0]) == {"raw", "sent", "sent_id", "tokens"}
        if ref["no_target"]:
            n_empty += 1
            assert ref["ann_id"] == [-1] and ref["kind"] == "no_target"
        else:
            union = np.any([coco.annToMask(coco.anns[a]) for a in ref["ann_id"]], axis=0)
            assert all(coco.anns[a]["image_id"] == ref["image_id"] for a in ref["ann_id"])
            assert union.any()
    assert n_empty > 0


def test_writers_are_byte_deterministic_across_workers(tmp_path: Path, refcoco_dir: Path) -> None:
    write_refcoco_style(tmp_path / "again", CFG, SPLITS, workers=2)
    assert _tree_hashes(tmp_path / "again") == _tree_hashes(refcoco_dir)
    write_reasonseg_style(tmp_path / "rs1", CFG, {"val": 4})
    write_reasonseg_style(tmp_path / "rs2", CFG, {"val": 4})
    assert _tree_hashes(tmp_path / "rs1") == _tree_hashes(tmp_path / "rs2")


def test_reasonseg_polygons_fill_back_to_the_mask(tmp_path: Path) -> None:
    write_reasonseg_style(tmp_path, CFG, {"val": 12})
    files = sorted((tmp_path / "val").glob("*.json"))
    assert len(files) == 12
    for path in files:
        meta = json.loads(path.read_text())
        sample = generate_sample(CFG, "val", int(path.stem.split("-")[1]))
        assert meta["text"] == [sample.instruction] and isinstance(meta["is_sentence"], bool)
        assert (path.parent / f"{path.stem}.jpg").exists()
        if not sample.target_ids:
            assert meta["shapes"] == []
            continue
        canvas = Image.new("L", sample.image.size, 0)
        draw = ImageDraw.Draw(canvas)
        for shape in meta["shapes"]:
            assert shape["label"] == "target" and shape["shape_type"] == "polygon"
            draw.polygon([tuple(p) for p in shape["points"]], fill=1)
        filled = np.asarray(canvas).astype(bool)
        gt = sample.target_mask
        assert (filled & gt).sum() / (filled | gt).sum() > 0.9


def test_image_text_corpus_loads_with_datasets(tmp_path: Path) -> None:
    import datasets

    path = write_image_text_corpus(tmp_path / "corpus", CFG, {"train": 5, "val": 3})
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 8
    assert set(ds.column_names) >= {"id", "image", "text", "width", "height"}
    row = ds[0]
    assert row["text"].startswith("A ") and (tmp_path / "corpus" / row["image"]).exists()
    with_images = load_image_text_corpus(tmp_path / "corpus", with_images=True, cache_dir=tmp_path / "hf2")
    assert with_images[0]["image"].size == (row["width"], row["height"])


def test_image_text_corpus_carries_instance_masks(tmp_path: Path) -> None:
    path = write_image_text_corpus(tmp_path / "a", CFG, {"train": 4})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        sample = generate_sample(CFG, "train", i)
        assert row["instruction"] == sample.instruction and row["kind"] == sample.kind
        assert [o["id"] for o in row["instances"]] == list(range(len(sample.masks)))
        for inst, mask in zip(row["instances"], sample.masks, strict=True):
            assert isinstance(inst["rle"]["counts"], str)
            assert np.array_equal(decode_rle(inst["rle"]), mask) and inst["area"] == int(mask.sum())
            assert inst["target"] == (inst["id"] in sample.target_ids)
            assert set(inst) == {"id", "shape", "colour", "size_name", "rle", "area", "target"}
    again = write_image_text_corpus(tmp_path / "b", CFG, {"train": 4})
    assert again.read_bytes() == path.read_bytes()
