"""Every path that loads an image returns the displayed (EXIF-transposed) picture and its displayed size.

Paths: the data loaders (ReasonSeg sizes + `RefSample.load_image`, COCO refs, Hugging Face rows without
a size column), the capture sources (records with image paths, and `datasets`' imagefolder), and the atom
cards' / provenance figures' image source. Each gets photographs stored rotated with EXIF orientations
3, 6 and 8 (UTF-8 annotation files only, so that nothing else can make the test fail).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _image_fixtures import GREEN, looks_upright, save_oriented, upright

from analysis.atoms.cards import ImageSource
from sae.capture.sources import open_source
from segcompass.data import GRefCocoDataset, HFRowsDataset, ReasonSegDataset

H, W = 40, 64
ORIENTATIONS = [3, 6, 8]
GREEN_Q = (slice(0, 20), slice(32, 64))  # the top-right quadrant of the upright picture


def _green_under(image: np.ndarray, mask: np.ndarray) -> bool:
    return bool(np.abs(np.median(image[mask], axis=0) - np.asarray(GREEN)).max() <= 40)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for o in ORIENTATIONS:
        save_oriented(root / f"o{o}.jpg", upright(H, W), o)
    return root


def test_reasonseg_sizes_masks_and_images_are_upright(photos: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    val.mkdir()
    green = [[32, 0], [63, 0], [63, 19], [32, 19]]
    for o in ORIENTATIONS:
        (val / f"o{o}.jpg").write_bytes((photos / f"o{o}.jpg").read_bytes())
        meta = {"text": ["the green block"], "is_sentence": False,
                "shapes": [{"label": "target", "points": green, "shape_type": "polygon"}]}  # fmt: skip
        (val / f"o{o}.json").write_text(json.dumps(meta))
    ds = ReasonSegDataset(tmp_path, "val")
    assert len(ds) == 3
    for s in ds:
        assert s.image_size == (H, W), s.sample_id
        image = np.asarray(s.load_image())
        assert image.shape[:2] == (H, W) and looks_upright(image), s.sample_id
        assert _green_under(image, s.masks[0]), s.sample_id


def _coco(photos: Path, tmp_path: Path) -> tuple[Path, Path]:
    images = [{"id": o, "file_name": f"o{o}.jpg", "height": H, "width": W} for o in ORIENTATIONS]
    green = [[32.0, 0.0, 64.0, 0.0, 64.0, 20.0, 32.0, 20.0]]
    anns = [{"id": 100 + o, "image_id": o, "category_id": 1, "segmentation": green, "iscrowd": 0,
             "bbox": [32.0, 0.0, 32.0, 20.0], "area": 640.0} for o in ORIENTATIONS]  # fmt: skip
    (tmp_path / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": []})
    )
    refs = [{"ref_id": o, "image_id": o, "ann_id": [100 + o], "split": "val", "category_id": [1],
             "sentences": [{"raw": "green", "sent": "green", "sent_id": o, "tokens": ["green"]}], "sent_ids": [o]}
            for o in ORIENTATIONS]  # fmt: skip
    (tmp_path / "grefs.json").write_text(json.dumps(refs))
    return tmp_path / "grefs.json", tmp_path / "instances.json"


def test_coco_loaders_return_the_upright_image_for_the_annotated_frame(photos: Path, tmp_path: Path) -> None:
    refs, instances = _coco(photos, tmp_path)
    ds = GRefCocoDataset(refs, instances, photos, "val")
    for s in ds:
        image = np.asarray(s.load_image())
        assert image.shape[:2] == s.image_size == (H, W) and looks_upright(image), s.sample_id
        assert _green_under(image, s.masks[0])


def test_hf_rows_without_a_size_read_the_displayed_size(photos: Path, tmp_path: Path) -> None:
    green = {"segmentation": [[32.0, 0.0, 64.0, 0.0, 64.0, 20.0, 32.0, 20.0]], "id": 1}
    rows = [{"ref_id": o, "split": "val", "captions": ["green"], "image_path": f"o{o}.jpg",
             "raw_anns": json.dumps(green), "raw_image_info": json.dumps({"id": o})} for o in ORIENTATIONS]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "rows.parquet")
    ds = HFRowsDataset(tmp_path / "rows.parquet", photos, split="val")
    for s in ds:
        assert s.image_size == (H, W), s.sample_id
        image = np.asarray(s.load_image())
        assert looks_upright(image) and _green_under(image, s.masks[0]), s.sample_id


def test_capture_sources_records_and_imagefolder(photos: Path, tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    lines = [
        json.dumps({"id": f"o{o}", "image": str(photos / f"o{o}.jpg"), "text": "x"}) for o in ORIENTATIONS
    ]
    (records / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    (records / "stage.json").write_text(json.dumps({"stage": "corpus"}))  # a cached stage's record: not data
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    for o in ORIENTATIONS:
        (folder / f"o{o}.jpg").write_bytes((photos / f"o{o}.jpg").read_bytes())
    meta = [json.dumps({"file_name": f"o{o}.jpg", "text": "x"}) for o in ORIENTATIONS]
    (folder / "metadata.jsonl").write_text("\n".join(meta) + "\n")
    for path in (records, folder):
        source = open_source(path)
        assert len(source) == 3
        for doc in source:
            image = np.asarray(doc.image)
            assert doc.image.mode == "RGB" and image.shape[:2] == (H, W), (path.name, doc.source_id)
            assert looks_upright(image), (path.name, doc.source_id)


def test_atom_card_and_provenance_image_source(photos: Path) -> None:
    images = ImageSource.from_folder(photos)
    for o in ORIENTATIONS:
        image, why = images.load(f"o{o}")
        assert why is None and image.size == (W, H) and looks_upright(np.asarray(image)), o


def test_palette_rgba_and_grayscale_pngs_load_as_rgb_through_a_loader(tmp_path: Path) -> None:
    from PIL import Image

    val = tmp_path / "val"
    val.mkdir()
    pal = Image.new("P", (W, H), 1)
    pal.putpalette([0, 0, 0, *GREEN] + [0] * 762)
    pal.save(val / "palette.png")
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3], rgba[:, : W // 2, 3] = GREEN, 255  # right half fully transparent: shown as white
    Image.fromarray(rgba, mode="RGBA").save(val / "rgba.png")
    Image.fromarray(np.full((H, W), 77, dtype=np.uint8), mode="L").save(val / "gray.png")
    shape = [{"label": "target", "points": [[0, 0], [W // 2 - 1, 0], [W // 2 - 1, H - 1], [0, H - 1]]}]
    for name in ("palette", "rgba", "gray"):
        (val / f"{name}.json").write_text(
            json.dumps({"text": ["left half"], "is_sentence": False, "shapes": shape})
        )
    by_name = {s.meta["name"]: s for s in ReasonSegDataset(tmp_path, "val")}
    for name, left, right in (
        ("palette", GREEN, GREEN),
        ("rgba", GREEN, (255, 255, 255)),
        ("gray", (77,) * 3, (77,) * 3),
    ):
        image = by_name[name].load_image()
        arr = np.asarray(image)
        assert image.mode == "RGB" and arr.shape == (H, W, 3), name
        assert tuple(arr[H // 2, 2]) == left and tuple(arr[H // 2, W - 3]) == right, name
        assert by_name[name].masks[0][:, : W // 2].all() and not by_name[name].masks[0][:, W // 2 :].any()
