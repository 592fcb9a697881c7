"""Writer of a ReasonSeg-style folder: `{split}/<name>.jpg` + `<name>.json` (labelme-like polygons)."""

from __future__ import annotations

import logging
from pathlib import Path

from segcompass.world.config import WorldConfig
from segcompass.world.records import dump_json, iter_records

logger = logging.getLogger(__name__)

_SENTENCE_KINDS = frozenset({"attribute", "relational"})


def write_reasonseg_style(
    out_dir: str | Path, config: WorldConfig, splits: dict[str, int], workers: int = 1
) -> dict[str, Path]:
    """Write one image and one JSON per sample under `out_dir/<split>/`.

    JSON fields: `text` (list with the instruction), `is_sentence` (True for the multi-step kinds),
    `shapes` ([{label: "target", points: [[x, y], ...], shape_type: "polygon", ...}], one polygon per
    connected part of the union of the target masks, empty for no-target samples), plus `kind`,
    `reasoning`, `imageWidth`, `imageHeight`. Returns the split folders.
    """
    out = Path(out_dir)
    folders = {}
    count = 0
    for rec in iter_records(config, splits, workers, polygons=True):
        folder = folders.setdefault(rec.split, out / rec.split)
        folder.mkdir(parents=True, exist_ok=True)
        name = rec.sample_id
        (folder / f"{name}.{rec.image_ext}").write_bytes(rec.image_bytes)
        shapes = [
            {"label": "target", "points": poly, "shape_type": "polygon", "group_id": None, "flags": {}}
            for poly in rec.target_polygons or []
        ]
        meta = {
            "text": [rec.instruction],
            "is_sentence": rec.kind in _SENTENCE_KINDS,
            "shapes": shapes,
            "kind": rec.kind,
            "reasoning": rec.reasoning,
            "imagePath": f"{name}.{rec.image_ext}",
            "imageWidth": rec.width,
            "imageHeight": rec.height,
        }
        dump_json(meta, folder / f"{name}.json")
        count += 1
    logger.info("wrote %d ReasonSeg-style samples to %s", count, out)
    return folders
