"""RefCOCO-family rows in the common Hugging Face layout (Parquet or JSON-lines files).

Columns read (as in the ``refcoco`` / ``refcocog`` row datasets on the Hub): ``image_path`` (relative to
``images_dir``; ``file_name`` or the path's base name are tried next), ``captions`` (list of sentences;
``sentences[*].sent`` when absent), ``raw_anns`` (the COCO annotation as a JSON string or dict, or a list
of them for several targets), ``raw_image_info`` (JSON with ``height`` and ``width``; the image header is
read when absent), ``split``, ``ref_id``, ``ann_id``, ``image_id``, ``bbox``. One sample per caption.
Rows without a segmentation are counted and skipped unless ``bbox_fallback=True`` (then the ``bbox``
[x, y, w, h] becomes a box mask, counted in ``notes``).

A row whose JSON fields do not parse is counted in ``skipped["bad_field"]`` (``strict=True`` raises); a
JSON-lines file that is not UTF-8 is read as Windows-1252 with a warning; an unreadable rows file is a
:class:`DatasetFormatError` naming it. The image size read from the header is the displayed one (EXIF
orientation applied, ``sae.images``).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sae.images import image_size
from segcompass.data.base import RefDataset, check_split
from segcompass.data.geometry import SegmentationCheck, check_segmentation, decode_segmentation
from segcompass.data.jsonfile import FALLBACK_ENCODINGS
from segcompass.data.sample import DatasetFormatError, InvalidGeometryError, MissingImageError, RefSample

logger = logging.getLogger(__name__)


def read_rows(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows of Parquet (``.parquet``) and JSON-lines (``.jsonl``/``.json``) files, in file order."""
    frames = []
    for f in files:
        if f.suffix not in (".parquet", ".jsonl", ".json"):
            raise DatasetFormatError(f"{f}: expected a .parquet or .jsonl file")
        try:
            if f.suffix == ".parquet":
                frames.append(pd.read_parquet(f))
            else:
                frames.append(pd.read_json(io.StringIO(_decoded_text(f)), lines=True))
        except DatasetFormatError:
            raise
        except (OSError, ValueError) as err:  # pyarrow / pandas parse errors are ValueErrors or OSErrors
            raise DatasetFormatError(f"cannot read rows file {f}: {err}") from err
    rows = pd.concat(frames, ignore_index=True).to_dict("records") if frames else []
    return [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows]


def _decoded_text(path: Path) -> str:
    """A JSON-lines file's text: UTF-8, else the fallback encodings (with a warning)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        for encoding in FALLBACK_ENCODINGS:
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                continue
            logger.warning("rows file %s is not UTF-8; read it as %s", path, encoding)
            return text
        raise DatasetFormatError(f"cannot read rows file {path}: not UTF-8 ({err})") from err


class _BadField(ValueError):
    """A row's field holds a JSON string that does not parse, or a value of the wrong kind."""


def _json(v: Any, name: str = "field") -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except json.JSONDecodeError as err:
        raise _BadField(f"{name} is not valid JSON ({err})") from err


@dataclass
class _Entry:
    row: dict[str, Any]
    caption: int
    captions: list[str]
    image_path: Path
    size: tuple[int, int]
    checks: list[SegmentationCheck]


class HFRowsDataset(RefDataset):
    """Loader of Hugging Face-style RefCOCO rows."""

    def __init__(
        self,
        files: str | Path | Sequence[str | Path],
        images_dir: str | Path,
        split: str | None = None,
        *,
        source: str = "refcoco-hf",
        bbox_fallback: bool = False,
        skip_missing: bool = False,
        strict: bool = False,
    ) -> None:
        """
        Args:
            files: Parquet / JSON-lines files of rows.
            images_dir: root the rows' ``image_path`` is relative to.
            split: keep rows whose ``split`` column equals this (None keeps all rows).
            source: name written into the samples.
            bbox_fallback: use the ``bbox`` as a box mask when a row has no segmentation.
            skip_missing: count and skip rows whose image is missing instead of raising.
            strict: raise on invalid segmentations instead of counting skips.
        """
        super().__init__()
        paths = [Path(files)] if isinstance(files, str | Path) else [Path(f) for f in files]
        rows = read_rows(paths)
        self.source, self.split, self.images_dir, self.strict = (
            source,
            split or "all",
            Path(images_dir),
            strict,
        )
        if split is not None:
            check_split(
                split, sorted({str(r.get("split")) for r in rows}), f"rows in {[str(p) for p in paths]}"
            )
            rows = [r for r in rows if r.get("split") == split]
        self._entries: list[_Entry] = []
        missing: list[Path] = []
        for i, row in enumerate(rows):
            self._index_row(i, row, bbox_fallback, skip_missing, missing)
        if missing:
            raise MissingImageError(
                f"{len(missing)} rows name images missing under {self.images_dir} (e.g. {missing[0]}); "
                "pass skip_missing=True to count and skip them"
            )
        logger.info("%s/%s: one sample per caption", source, self.split)
        self.report()

    def _image(self, row: dict[str, Any]) -> Path | None:
        names = [row.get("image_path"), row.get("file_name")]
        candidates = [self.images_dir / n for n in names if isinstance(n, str) and n]
        candidates += [self.images_dir / Path(n).name for n in names if isinstance(n, str) and n]
        return next((c for c in candidates if c.is_file()), None)

    def _index_row(
        self, i: int, row: dict, bbox_fallback: bool, skip_missing: bool, missing: list[Path]
    ) -> None:
        key = f"row {i} (ref {row.get('ref_id')})"
        try:
            self._index_fields(key, row, bbox_fallback, skip_missing, missing)
        except _BadField as err:
            if self.strict:
                raise DatasetFormatError(f"{key}: {err}") from err
            self._skip("bad_field", key, str(err))

    def _index_fields(
        self, key: str, row: dict, bbox_fallback: bool, skip_missing: bool, missing: list[Path]
    ) -> None:
        captions = row.get("captions")
        if not captions:
            sentences = _json(row.get("sentences"), "sentences") or []
            captions = [s.get("sent", "") for s in sentences if isinstance(s, dict)]
        if not captions:
            self._skip("no_captions", key)
            return
        image = self._image(row)
        if image is None:
            if skip_missing:
                self._skip("missing_image", key, str(row.get("image_path")), n=len(captions))
            else:
                missing.append(self.images_dir / str(row.get("image_path")))
            return
        info = _json(row.get("raw_image_info"), "raw_image_info") or {}
        if isinstance(info, dict) and "height" in info and "width" in info:
            try:
                size = (int(info["height"]), int(info["width"]))
            except (TypeError, ValueError) as err:
                raise _BadField(f"raw_image_info size is not two integers ({err})") from err
        else:
            try:
                size = image_size(image)  # as displayed: EXIF orientation applied
            except OSError as err:
                if self.strict:
                    raise
                self._skip("unreadable_image", key, str(err), n=len(captions))
                return
        anns = _json(row.get("raw_anns"), "raw_anns")
        anns = [anns] if isinstance(anns, dict) else (anns or [])
        checks = []
        for ann in anns:
            seg = ann.get("segmentation") if isinstance(ann, dict) else None
            if seg is None:
                continue
            chk = check_segmentation(seg, *size)
            for why in chk.invalid:
                if self.strict:
                    raise InvalidGeometryError(f"{key}: {why}")
                self._skip("invalid_part", key, why)
            for _ in chk.boxes:
                self._note("box_part", key)
            if chk.usable:
                checks.append(chk)
        if not checks:
            bbox = row.get("bbox")
            if bbox_fallback and isinstance(bbox, list) and len(bbox) == 4:
                self._note("bbox_as_mask", key)
                checks = [SegmentationCheck(boxes=[[float(v) for v in bbox]])]
            else:
                self._skip("no_segmentation", key, n=len(captions))
                return
        for j in range(len(captions)):
            self._entries.append(_Entry(row, j, [str(c) for c in captions], image, size, checks))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> RefSample:
        e = self._entries[index]
        r = e.row
        return RefSample(
            sample_id=f"{self.source}/{r.get('split', self.split)}/ref{r.get('ref_id')}/cap{e.caption}",
            source=self.source,
            split=str(r.get("split", self.split)),
            image_path=e.image_path,
            image_size=e.size,
            text=e.captions[e.caption],
            texts=e.captions,
            masks=[decode_segmentation(c, *e.size) for c in e.checks],
            text_index=e.caption,
            meta={k: r.get(k) for k in ("ref_id", "ann_id", "image_id", "category_id", "bbox") if k in r},
        )
