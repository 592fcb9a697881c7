"""Instance masks of captured documents: store document (source_id) → its image's instances.

Two sources:

- the synthetic world's image–text corpus (`corpus.jsonl`, one record per image; its `instances` carry the
  RLE masks, attributes and whether the instruction refers to them), keyed by the record `id` — the
  `source_id` that capture gives each document;
- a COCO `instances.json` (real data sets), keyed by image file name, with an optional mapping
  source_id → file name (a JSON object); without one a source_id matches a file name or its stem.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcompass.world.masks import decode_rle

logger = logging.getLogger(__name__)

COCO_SIZE_LIMITS = (32**2, 96**2)
"""COCO's small / medium / large area limits (pixels), used when an instance has no size class."""


@dataclass(frozen=True)
class Instance:
    """One object instance of an image."""

    id: int
    """Instance id (object index in the world, annotation id in COCO)."""
    rle: dict
    """COCO RLE of the (visible) mask; counts as str or bytes."""
    area: int
    """Mask area in pixels."""
    target: bool = False
    """Whether the document's text / instruction refers to this instance."""
    shape: str | None = None
    """Shape (world) or category name (COCO)."""
    colour: str | None = None
    """Colour name (world only)."""
    size_name: str | None = None
    """Size class ("small", "medium", "large"); None lets `size_bucket` use COCO's area limits."""

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image the mask belongs to."""
        return int(self.rle["size"][0]), int(self.rle["size"][1])

    def mask(self) -> np.ndarray:
        """Bool [H, W] mask."""
        return decode_rle(self.rle)

    @property
    def size_bucket(self) -> str:
        """The size class, or COCO's small / medium / large by area."""
        if self.size_name:
            return self.size_name
        small, medium = COCO_SIZE_LIMITS
        return "small" if self.area < small else "medium" if self.area < medium else "large"


class InstanceIndex:
    """Instances by document source_id (`index.get(source_id)` → list or None when unknown)."""

    def __init__(self, by_source: dict[str, list[Instance]], origin: str) -> None:
        self._by_source = by_source
        self.origin = origin

    def __len__(self) -> int:
        return len(self._by_source)

    def __contains__(self, source_id: object) -> bool:
        return source_id in self._by_source

    def get(self, source_id: str) -> list[Instance] | None:
        return self._by_source.get(str(source_id))

    def __repr__(self) -> str:
        return f"InstanceIndex({len(self)} images from {self.origin})"

    @classmethod
    def from_corpus(cls, path: str | os.PathLike, keep: Iterable[str] | None = None) -> InstanceIndex:
        """Read a corpus folder (or its `corpus.jsonl`); `keep` limits the index to those source ids."""
        path = Path(path)
        file = path / "corpus.jsonl" if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"{path}: no corpus.jsonl (write one with write_image_text_corpus)")
        wanted = set(map(str, keep)) if keep is not None else None
        by_source: dict[str, list[Instance]] = {}
        with open(file, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if "instances" not in row:
                    raise ValueError(
                        f"{file} line {n}: no `instances` (a corpus written before masks were added; "
                        "write it again)"
                    )
                sid = str(row["id"])
                if wanted is not None and sid not in wanted:
                    continue
                by_source[sid] = [
                    Instance(
                        id=int(o["id"]),
                        rle=o["rle"],
                        area=int(o["area"]),
                        target=bool(o.get("target", False)),
                        shape=o.get("shape"),
                        colour=o.get("colour"),
                        size_name=o.get("size_name"),
                    )
                    for o in row["instances"]
                ]
        logger.info("instance masks of %d images from %s", len(by_source), file)
        return cls(by_source, str(file))

    @classmethod
    def from_coco(
        cls,
        instances_json: str | os.PathLike,
        file_map: str | os.PathLike | dict[str, str] | None = None,
        targets: dict[str, list[int]] | None = None,
    ) -> InstanceIndex:
        """Read a COCO `instances.json` (RLE or polygon segmentations; crowd annotations skipped).

        Args:
            file_map: source_id → image file name (a dict or a JSON file); default: every file name and
                every file-name stem is its own source_id.
            targets: source_id → annotation ids the document's text refers to (default: none).
        """
        from pycocotools import mask as mask_utils

        coco = json.loads(Path(instances_json).read_text())
        cats = {c["id"]: c.get("name") for c in coco.get("categories", [])}
        images = {img["id"]: img for img in coco["images"]}
        per_file: dict[str, list[Instance]] = {img["file_name"]: [] for img in coco["images"]}
        skipped = 0
        for ann in coco["annotations"]:
            img = images.get(ann["image_id"])
            if img is None or ann.get("iscrowd", 0):
                skipped += 1
                continue
            h, w = int(img["height"]), int(img["width"])
            seg = ann["segmentation"]
            if isinstance(seg, list):  # polygons: one RLE per part, merged
                parts = [p for p in seg if len(p) >= 6]
                if not parts:
                    skipped += 1
                    continue
                rle = mask_utils.merge(mask_utils.frPyObjects(parts, h, w))
            elif isinstance(seg["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = seg
            per_file[img["file_name"]].append(
                Instance(
                    id=int(ann["id"]),
                    rle=rle,
                    area=int(mask_utils.area(_bytes_rle(rle))),
                    shape=cats.get(ann.get("category_id")),
                    size_name=(ann.get("attributes") or {}).get("size_name"),
                )
            )
        if skipped:
            logger.info("skipped %d crowd, invalid or orphan annotations", skipped)
        if file_map is None:
            mapping = {**{Path(f).stem: f for f in per_file}, **{f: f for f in per_file}}
        elif isinstance(file_map, dict):
            mapping = dict(file_map)
        else:
            mapping = json.loads(Path(file_map).read_text())
        missing = sorted({f for f in mapping.values() if f not in per_file})
        if missing:
            raise ValueError(f"file map names {len(missing)} images not in {instances_json}: {missing[:5]}")
        targets = targets or {}
        by_source = {}
        for sid, fname in mapping.items():
            wanted = set(targets.get(sid, ()))
            by_source[str(sid)] = [
                Instance(i.id, i.rle, i.area, i.id in wanted, i.shape, i.colour, i.size_name)
                for i in per_file[fname]
            ]
        return cls(by_source, str(instances_json))


def _bytes_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
