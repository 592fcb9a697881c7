"""Writer of a COCO `instances.json` + gRefCOCO-style `grefs(unc).json` data set with an `images/` folder."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from segcompass.world.config import WorldConfig
from segcompass.world.records import dump_json, iter_records
from segcompass.world.vocab import SHAPES

logger = logging.getLogger(__name__)

CATEGORY_IDS: dict[str, int] = {shape: i + 1 for i, shape in enumerate(SHAPES)}
"""COCO category id of each shape."""


def _sentence(raw: str, sent_id: int) -> dict:
    sent = " ".join(re.sub(r"[^a-z0-9 ]+", " ", raw.lower()).split())
    return {"raw": raw, "sent": sent, "sent_id": sent_id, "tokens": sent.split()}


def write_refcoco_style(
    out_dir: str | Path, config: WorldConfig, splits: dict[str, int], workers: int = 1
) -> dict[str, Path]:
    """Write `images/`, `instances.json` (COCO, RLE masks) and `grefs(unc).json` (gRefCOCO refs).

    One ref per sample with one sentence; `ann_id` and `category_id` are lists, `[-1]` for no target, and
    `no_target` is set. Extra ref fields: `kind`, `reasoning`. Image and annotation ids count from 1 in
    split order. Returns the paths written.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    ann_id = 0
    for image_id, rec in enumerate(iter_records(config, splits, workers, rle=True), start=1):
        file_name = f"{rec.sample_id}.{rec.image_ext}"
        (out / "images" / file_name).write_bytes(rec.image_bytes)
        images.append({"id": image_id, "file_name": file_name, "width": rec.width, "height": rec.height})
        ann_ids = []
        assert rec.rles is not None
        for obj, rle in zip(rec.objects, rec.rles, strict=True):
            ann_id += 1
            ann_ids.append(ann_id)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[obj["shape"]],
                    "segmentation": rle,
                    "area": obj["visible_area"],
                    "bbox": obj["bbox"],
                    "iscrowd": 0,
                    "attributes": {k: obj[k] for k in ("colour", "size_name", "z")},
                }
            )
        targets = rec.target_ids
        refs.append(
            {
                "ref_id": len(refs),
                "image_id": image_id,
                "ann_id": [ann_ids[t] for t in targets] if targets else [-1],
                "category_id": [CATEGORY_IDS[rec.objects[t]["shape"]] for t in targets] if targets else [-1],
                "split": rec.split,
                "file_name": file_name,
                "sentences": [_sentence(rec.instruction, len(refs))],
                "sent_ids": [len(refs)],
                "no_target": not targets,
                "kind": rec.kind,
                "reasoning": rec.reasoning,
            }
        )
    categories = [{"id": i, "name": s, "supercategory": "shape"} for s, i in CATEGORY_IDS.items()]
    instances = {
        "info": {"description": "SegCompass synthetic world", "seed": config.seed},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    paths = {"instances": out / "instances.json", "refs": out / "grefs(unc).json", "images": out / "images"}
    dump_json(instances, paths["instances"])
    dump_json(refs, paths["refs"])
    logger.info(
        "wrote %d images, %d annotations, %d refs to %s", len(images), len(annotations), len(refs), out
    )
    return paths
