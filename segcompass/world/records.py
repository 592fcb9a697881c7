"""Turning samples into serialisable records, optionally in worker processes, in a deterministic order."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from segcompass.world.config import WorldConfig, check_split_seeds, resolve_split_seed
from segcompass.world.generate import generate_sample
from segcompass.world.masks import encode_rle, mask_polygons

logger = logging.getLogger(__name__)


@dataclass
class SampleRecord:
    """Everything a writer needs from one sample, as plain data (picklable, JSON-ready)."""

    sample_id: str
    """Identifier "<split>-<index:06d>"."""
    split: str
    """Split name."""
    index: int
    """Index within the split."""
    width: int
    """Image width."""
    height: int
    """Image height."""
    image_bytes: bytes
    """Encoded image (JPEG or PNG as configured)."""
    image_ext: str
    """File extension of `image_bytes` ("jpg" or "png")."""
    instruction: str
    """Instruction text."""
    kind: str
    """Instruction kind."""
    target_ids: list[int]
    """Referred objects (indices into `objects`)."""
    reasoning: str
    """Reasoning text."""
    description: str
    """Scene description."""
    objects: list[dict]
    """Per object: id, shape, colour, size_name, cx, cy, radius, area (analytic), z, visible_area, bbox."""
    rles: list[dict] | None = None
    """COCO RLE of each object's visible mask, when requested."""
    target_polygons: list[list[list[float]]] | None = None
    """Outline polygons of the union of the target masks, when requested."""


def encode_image(image, config: WorldConfig) -> tuple[bytes, str]:
    """Image bytes in the configured format and the matching file extension."""
    buf = io.BytesIO()
    if config.image_format == "JPEG":
        image.save(buf, format="JPEG", quality=config.jpeg_quality)
        return buf.getvalue(), "jpg"
    image.save(buf, format="PNG")
    return buf.getvalue(), "png"


def _bbox(mask) -> list[int]:
    """COCO [x, y, w, h] of a non-empty mask."""
    xs = mask.any(axis=0).nonzero()[0]
    ys = mask.any(axis=1).nonzero()[0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def make_record(config: WorldConfig, split: str, index: int, rle: bool, polygons: bool) -> SampleRecord:
    """Generate sample `index` of `split` and convert it to a record."""
    s = generate_sample(config, split, index)
    data, ext = encode_image(s.image, config)
    objects = [
        {
            "id": o.id,
            "shape": o.shape,
            "colour": o.colour,
            "size_name": o.size_name,
            "cx": round(o.cx, 3),
            "cy": round(o.cy, 3),
            "radius": round(o.radius, 3),
            "area": round(o.area, 3),
            "z": o.z,
            "visible_area": int(m.sum()),
            "bbox": _bbox(m),
        }
        for o, m in zip(s.scene.objects, s.masks, strict=True)
    ]
    return SampleRecord(
        sample_id=s.sample_id,
        split=split,
        index=index,
        width=s.scene.width,
        height=s.scene.height,
        image_bytes=data,
        image_ext=ext,
        instruction=s.instruction,
        kind=s.kind,
        target_ids=list(s.target_ids),
        reasoning=s.reasoning,
        description=s.description,
        objects=objects,
        rles=[encode_rle(m) for m in s.masks] if rle else None,
        target_polygons=mask_polygons(s.target_mask) if polygons else None,
    )


def _job(args: tuple[WorldConfig, str, int, bool, bool]) -> SampleRecord:
    return make_record(*args)


def iter_records(
    config: WorldConfig, splits: dict[str, int], workers: int = 1, rle: bool = False, polygons: bool = False
) -> Iterator[SampleRecord]:
    """Records of the first `n` samples of each split, splits in dict order, indices ascending.

    With `workers > 1` samples are generated in spawned worker processes; the order (and thus every byte
    written) does not depend on the number of workers.
    """
    for split in splits:
        resolve_split_seed(config, split)
    check_split_seeds({s: config.split_seeds[s] for s in splits})
    jobs = [(config, split, i, rle, polygons) for split, n in splits.items() for i in range(n)]
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            yield _job(job)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes=workers) as pool:
        yield from pool.imap(_job, jobs, chunksize=16)


def dump_json(obj: object, path: Path) -> None:
    """Write JSON deterministically (fixed key order as built, no trailing whitespace differences)."""
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
