"""Writer and loader of an OBELICS-like image-text corpus (images + `corpus.jsonl`) for SAE pretraining."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from segcompass.world.config import WorldConfig
from segcompass.world.records import SampleRecord, iter_records

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl"
"""Name of the JSON-lines index inside a corpus folder."""


def write_image_text_corpus(
    out_dir: str | Path, config: WorldConfig, splits: dict[str, int], workers: int = 1
) -> Path:
    """Write `images/<id>.jpg` and `corpus.jsonl` lines {id, image, text, width, height, split, instruction,
    kind, instances}.

    `image` is relative to `out_dir`; `text` is the scene description (it mentions every instance).
    `instruction` and `kind` are the sample's referring instruction (capture it with the text column
    "instruction"). `instances` lists every object: {id, shape, colour, size_name, rle (COCO RLE of the
    visible mask, counts as str), area (visible pixels), target (referred to by `instruction`)}; the
    analyses (coverage, atom naming) read them. Returns the path of corpus.jsonl.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for rec in iter_records(config, splits, workers, rle=True):
        rel = f"images/{rec.sample_id}.{rec.image_ext}"
        (out / rel).write_bytes(rec.image_bytes)
        row = {
            "id": rec.sample_id,
            "image": rel,
            "text": rec.description,
            "width": rec.width,
            "height": rec.height,
            "split": rec.split,
            "instruction": rec.instruction,
            "kind": rec.kind,
            "instances": _instances(rec),
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    path = out / CORPUS_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("wrote %d image-text pairs to %s", len(lines), out)
    return path


def _instances(rec: SampleRecord) -> list[dict]:
    """The record's objects with their visible-mask RLE and whether the instruction refers to them."""
    assert rec.rles is not None
    targets = set(rec.target_ids)
    return [
        {
            "id": obj["id"],
            "shape": obj["shape"],
            "colour": obj["colour"],
            "size_name": obj["size_name"],
            "rle": rle,
            "area": obj["visible_area"],
            "target": obj["id"] in targets,
        }
        for obj, rle in zip(rec.objects, rec.rles, strict=True)
    ]


def load_image_text_corpus(
    corpus_dir: str | Path, with_images: bool = False, cache_dir: str | Path | None = None
) -> datasets.Dataset:
    """The corpus as a `datasets.Dataset` read by `load_dataset("json", ...)`.

    With `with_images`, the `image` column holds absolute paths cast to `datasets.Image()` (decoded lazily
    to PIL); otherwise it keeps the relative path strings.
    """
    import datasets  # heavy; only needed here

    root = Path(corpus_dir).resolve()
    ds = datasets.load_dataset(
        "json",
        data_files=str(root / CORPUS_FILE),
        split="train",
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )
    if with_images:
        ds = ds.map(lambda row: {"image": str(root / row["image"])})
        ds = ds.cast_column("image", datasets.Image())
    return ds
