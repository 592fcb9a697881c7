"""ReasonSeg: ``<root>/<split>/<name>.jpg`` + ``<name>.json`` (labelme-style polygons).

JSON fields: ``text`` (a list of phrasings, or a string), ``is_sentence``, ``shapes`` [{label, points}] with
labels ``target``, ``ignore`` (any label containing "ignore") and ``flag`` (not drawn; other labels are
drawn as target, as LISA, and counted in ``notes``). The label map is drawn as LISA does: polygons
sorted by area, largest first, so a small "ignore" inside a target wins; target = 1, ignore = 255.

Which text: ``texts[text_index]`` (default the first, as LISA's evaluation); all are kept in
``RefSample.texts``. The target is one mask (the union of the target polygons; ReasonSeg does not
separate instances). Files without any target polygon are kept as no-target samples and counted in
``notes["no_target_polygons"]`` (``empty_shapes="skip"`` skips them instead). A polygon with fewer than 3
points is counted in ``skipped["invalid_polygon"]`` and left out (``strict=True`` raises); a file whose
target polygons are all invalid is skipped. The synthetic world's ``write_reasonseg_style`` loads here.

Files as they are in the public release: annotation JSON that is not UTF-8 is read as Windows-1252 (as
LISA's loader does; counted in ``notes["annotation_cp1252"]``); a JSON file that no encoding decodes or
that is not JSON is counted in ``skipped["unreadable_annotation"]`` and so is an image that cannot be
decoded (``unreadable_image``) — one bad file never aborts the split (``strict=True`` raises instead).
Sizes and masks are in the displayed frame: EXIF orientation applied (``sae.images``), as labelme draws.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sae.images import image_size
from segcompass.data.base import RefDataset, check_split
from segcompass.data.geometry import fill_polygon, polygon_points
from segcompass.data.jsonfile import read_json_file
from segcompass.data.sample import DatasetFormatError, InvalidGeometryError, MissingImageError, RefSample

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IGNORE_VALUE = 255


@dataclass
class _Entry:
    name: str
    image_path: Path
    size: tuple[int, int]
    """(H, W) of the image as displayed (EXIF orientation applied)."""
    texts: list[str]
    is_sentence: bool | None
    polygons: list[tuple[int, list[tuple[int, int]]]]
    """(label value 1 or 255, integer points)."""
    extra: dict


class ReasonSegDataset(RefDataset):
    """ReasonSeg-format loader (one sample per file, scored on one of its texts)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        text_index: int = 0,
        empty_shapes: Literal["no_target", "skip"] = "no_target",
        skip_missing: bool = False,
        strict: bool = False,
        source: str = "reasonseg",
    ) -> None:
        """
        Args:
            root: folder holding one sub-folder per split.
            split: a sub-folder of ``root`` with JSON files (train, val, test in the public release).
            text_index: which text of each file is the sample's text (clamped to the last one available).
            empty_shapes: files without target polygons: keep as no-target (``no_target``) or ``skip``.
            skip_missing: count and skip files whose image is missing instead of raising.
            strict: raise on invalid polygons and malformed files instead of counting skips.
            source: name written into the samples.
        """
        super().__init__()
        self.root, self.split, self.source = Path(root), split, source
        self.text_index, self.strict = text_index, strict
        if empty_shapes not in ("no_target", "skip"):
            raise ValueError(f"empty_shapes must be 'no_target' or 'skip', got {empty_shapes!r}")
        splits = sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("*.json")))
        check_split(split, splits, f"ReasonSeg folder {self.root}")
        self._entries: list[_Entry] = []
        missing: list[Path] = []
        for path in sorted((self.root / split).glob("*.json")):
            self._index_file(path, empty_shapes, skip_missing, missing)
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise MissingImageError(
                f"{len(missing)} ReasonSeg files in {self.root / split} have no image (e.g. {shown}); "
                "pass skip_missing=True to count and skip them"
            )
        logger.info(
            "%s/%s: text = texts[%d] of each file (all kept in RefSample.texts)", source, split, text_index
        )
        self.report()

    def _index_file(self, path: Path, empty_shapes: str, skip_missing: bool, missing: list[Path]) -> None:
        name = path.stem
        image = next((path.with_suffix(s) for s in IMAGE_SUFFIXES if path.with_suffix(s).is_file()), None)
        if image is None:
            if skip_missing:
                self._skip("missing_image", name)
            else:
                missing.append(path.with_suffix(".jpg"))
            return
        try:
            meta, encoding = read_json_file(path, "ReasonSeg annotation")
        except DatasetFormatError as err:
            if self.strict:
                raise
            self._skip("unreadable_annotation", name, str(err))
            return
        if encoding != "utf-8":
            self._note(f"annotation_{encoding}", name, f"not UTF-8; decoded as {encoding}")
        try:
            size = image_size(image)
        except OSError as err:  # ImageReadError (undecodable) is an OSError
            if self.strict:
                raise
            self._skip("unreadable_image", name, str(err))
            return
        texts = meta.get("text") if isinstance(meta, dict) else None
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            if self.strict:
                raise DatasetFormatError(f"{path}: 'text' must be a non-empty list of strings")
            self._skip("bad_text", name)
            return
        polygons: list[tuple[int, list[tuple[int, int]]]] = []
        n_target_shapes = 0
        for i, shape in enumerate(meta.get("shapes") or []):
            label = str(shape.get("label", "")).lower() if isinstance(shape, dict) else ""
            if label == "flag":
                continue
            value = IGNORE_VALUE if "ignore" in label else 1
            if value == 1:
                n_target_shapes += 1
                if label != "target":
                    self._note("unknown_label_as_target", name, f"label {label!r}")
            pts = polygon_points(shape.get("points") if isinstance(shape, dict) else None)
            if pts is None:
                if self.strict:
                    raise InvalidGeometryError(
                        f"{path}: shape {i} is not a polygon of at least 3 [x, y] points"
                    )
                self._skip("invalid_polygon", f"{name} shape {i}")
                continue
            polygons.append((value, pts))
        if not any(v == 1 for v, _ in polygons):
            if n_target_shapes:
                self._skip("no_valid_target_polygon", name)
                return
            if empty_shapes == "skip":
                self._skip("no_target_polygons", name)
                return
            self._note("no_target_polygons", name, "kept as a no-target sample")
        is_sentence = meta.get("is_sentence")
        extra = {k: v for k, v in meta.items() if k in ("kind", "reasoning")}
        entry = _Entry(
            name, image, size, texts, None if is_sentence is None else bool(is_sentence), polygons, extra
        )
        self._entries.append(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> RefSample:
        e = self._entries[index]
        h, w = e.size
        filled = [(value, fill_polygon(pts, h, w)) for value, pts in e.polygons]
        label = np.zeros((h, w), dtype=np.uint8)
        for value, mask in sorted(filled, key=lambda vm: -int(vm[1].sum())):  # largest first (stable)
            label[mask] = value
        target = label == 1
        ti = min(self.text_index, len(e.texts) - 1)
        has_target = bool(target.any()) or any(v == 1 for v, _ in e.polygons)
        return RefSample(
            sample_id=f"{self.source}/{self.split}/{e.name}",
            source=self.source,
            split=self.split,
            image_path=e.image_path,
            image_size=(h, w),
            text=e.texts[ti],
            texts=list(e.texts),
            masks=[target] if has_target else [],
            no_target=not has_target,
            ignore=label == IGNORE_VALUE,
            text_index=ti,
            is_sentence=e.is_sentence,
            meta={"name": e.name, "num_polygons": len(e.polygons), **e.extra},
        )
