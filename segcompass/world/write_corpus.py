"""Writer and loader of an OBELICS-like image-text corpus (images + `corpus.jsonl`) for SAE pretraining."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from segcompass.world.config import WorldConfig
from segcompass.world.records import iter_records

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl"
"""Name of the JSON-lines index inside a corpus folder."""


def write_image_text_corpus(
    out_dir: str | Path, config: WorldConfig, splits: dict[str, int], workers: int = 1
) -> Path:
    """Write `images/<id>.jpg` and `corpus.jsonl` lines {id, image, text, width, height, split}.

    `image` is relative to `out_dir`; `text` is the scene description. Returns the path of corpus.jsonl.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for rec in iter_records(config, splits, workers):
        rel = f"images/{rec.sample_id}.{rec.image_ext}"
        (out / rel).write_bytes(rec.image_bytes)
        row = {
            "id": rec.sample_id,
            "image": rel,
            "text": rec.description,
            "width": rec.width,
            "height": rec.height,
            "split": rec.split,
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    path = out / CORPUS_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("wrote %d image-text pairs to %s", len(lines), out)
    return path


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
