"""RefCOCO / RefCOCO+ / RefCOCOg from the refer toolkit's files: refs + COCO ``instances.json`` + images.

The public refs ship as pickles (``refs(unc).p``, ``refs(umd).p``). Pickles are code, so this module
never looks for one: a pickle is read only from the path given as ``refs_pickle=`` (or to
:func:`convert_refer_pickle`), with an unpickler that refuses every class or function reference (the refs
are plain lists, dicts, strings and numbers). Convert once and load the JSON thereafter::

    convert_refer_pickle(Path("refcoco/refs(unc).p"), Path("refcoco/refs(unc).json"))
    ds = RefCocoDataset(Path("refcoco/refs(unc).json"), Path("refcoco/instances.json"), Path("train2014"),
                        split="val", variant="refcoco")

One sample per sentence; the text is the sentence's ``sent`` field (lower-cased, as LISA) unless
``text_field="raw"``. ``ann_id`` is a single annotation id.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from pathlib import Path
from typing import Any

from sae.files import atomic_write_text
from segcompass.data.coco_refs import CocoRefDataset, read_json
from segcompass.data.sample import DatasetFormatError

logger = logging.getLogger(__name__)

REFER_SPLITS: dict[str, tuple[str, ...]] = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}
"""Splits of each variant (RefCOCOg: the umd partition)."""

_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds only built-in containers and scalars; any global reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a refer refs pickle holds only lists, dicts, strings and numbers"
        )


def load_refer_pickle(refs_pickle: str | Path) -> list[dict]:
    """Read a refer-toolkit refs pickle from this exact path (data only; Python-2 strings decoded)."""
    data = Path(refs_pickle).read_bytes()
    try:
        refs = _DataOnlyUnpickler(io.BytesIO(data)).load()
    except UnicodeDecodeError:
        logger.warning("%s: Python-2 byte strings are not ASCII; decoding them as latin-1", refs_pickle)
        refs = _DataOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetFormatError(f"{refs_pickle}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


def convert_refer_pickle(pickle_path: str | Path, json_out: str | Path) -> Path:
    """One-time conversion of a refs pickle (at the path given) to JSON, written atomically."""
    refs = load_refer_pickle(pickle_path)
    out = Path(json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(refs, ensure_ascii=False))
    logger.info("converted %d refs from %s to %s", len(refs), pickle_path, out)
    return out


def _read_refs_json(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        head = f.read(1)
    if path.suffix.lower() in _PICKLE_SUFFIXES or head == b"\x80":
        raise DatasetFormatError(
            f"{path} is a pickle; pickles are read only when passed as refs_pickle=…, "
            "or convert it once with convert_refer_pickle(pickle_path, json_out)"
        )
    refs = read_json(path, "refs file")
    if not isinstance(refs, list):
        raise DatasetFormatError(f"{path}: expected a JSON list of refs")
    return refs


class RefCocoDataset(CocoRefDataset):
    """RefCOCO, RefCOCO+ or RefCOCOg (umd) — one sample per sentence."""

    def __init__(
        self,
        refs_json: str | Path | None,
        instances_json: str | Path,
        images_dir: str | Path,
        split: str,
        variant: str = "refcoco",
        *,
        refs_pickle: str | Path | None = None,
        text_field: str = "sent",
        skip_missing: bool = False,
        strict: bool = False,
    ) -> None:
        """
        Args:
            refs_json: refs converted to JSON (:func:`convert_refer_pickle`); None when ``refs_pickle`` is given.
            instances_json: the variant's COCO ``instances.json``.
            images_dir: folder with the COCO train2014 images.
            split: train/val/testA/testB (RefCOCO, RefCOCO+) or train/val/test (RefCOCOg umd).
            variant: ``refcoco``, ``refcoco+`` or ``refcocog``.
            refs_pickle: read the refs from this pickle instead (data-only unpickler); never discovered.
            text_field: sentence field used as the text (``sent`` or ``raw``).
            skip_missing: count and skip refs whose image is missing instead of raising.
            strict: raise on malformed refs and invalid polygon parts instead of counting skips.
        """
        if variant not in REFER_SPLITS:
            raise ValueError(f"unknown RefCOCO variant {variant!r}; expected one of {sorted(REFER_SPLITS)}")
        if (refs_json is None) == (refs_pickle is None):
            raise ValueError("give exactly one of refs_json (JSON) and refs_pickle (an explicit pickle path)")
        refs = load_refer_pickle(refs_pickle) if refs_pickle is not None else _read_refs_json(Path(refs_json))  # type: ignore[arg-type]
        super().__init__(
            refs, instances_json, images_dir, split, REFER_SPLITS[variant],
            source=variant, text_field=text_field, skip_missing=skip_missing, strict=strict,
        )  # fmt: skip

    def target_ann_ids(self, ref: dict) -> list[int] | None:
        ann = ref.get("ann_id")
        if isinstance(ann, list) and len(ann) == 1:
            ann = ann[0]
        return [ann] if isinstance(ann, int) and ann >= 0 else None
