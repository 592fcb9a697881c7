"""Shared core of the RefCOCO-family and gRefCOCO loaders: refs + COCO ``instances.json`` + an images folder.

One sample per sentence. The image file is ``images_dir / instances.images[image_id].file_name`` (the refs'
own ``file_name`` carries an annotation suffix in the public RefCOCO files and is not used). Checked
while indexing: the split, the image entry and file, every target annotation and its segmentation.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segcompass.data.base import RefDataset, check_split
from segcompass.data.geometry import SegmentationCheck, check_segmentation, decode_segmentation
from segcompass.data.jsonfile import read_json_file
from segcompass.data.sample import DatasetFormatError, InvalidGeometryError, MissingImageError, RefSample

logger = logging.getLogger(__name__)

REF_KEYS = frozenset(
    {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "category_id", "file_name"}
)
"""Standard ref fields; any other field of a ref is copied into ``RefSample.meta``."""


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file (UTF-8, else Windows-1252 with a warning), with the file named in the error."""
    data, encoding = read_json_file(path, what)
    if encoding != "utf-8":
        logger.warning("%s %s is not UTF-8; read it as %s", what, path, encoding)
    return data


class CocoInstances:
    """Index of a COCO ``instances.json``: images and annotations by id."""

    def __init__(self, path: str | Path) -> None:
        data = read_json(Path(path), "COCO instances file")
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DatasetFormatError(
                f"{path} is not a COCO instances file (needs 'images' and 'annotations')"
            )
        self.path = Path(path)
        self.images: dict[int, dict] = _by_id(data["images"], ("id", "file_name", "height", "width"))
        """Image entries by id (entries lacking a field, or with a non-integer id/size, are left out)."""
        self.anns: dict[int, dict] = _by_id(data["annotations"], ("id", "image_id"))
        """Annotation entries by id (malformed entries are left out)."""
        if not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
            raise DatasetFormatError(f"{path}: 'images' and 'annotations' must be lists")
        self.malformed = {
            "images": len(data["images"]) - len(self.images),
            "annotations": len(data["annotations"]) - len(self.anns),
        }
        """How many entries were left out; refs that name them are counted as unknown ids."""
        if any(self.malformed.values()):
            logger.warning(
                "%s: left out %d image and %d annotation entries without an integer id, size or file name",
                path, self.malformed["images"], self.malformed["annotations"],
            )  # fmt: skip
        self._by_image: dict[int, list[int]] | None = None

    def image_ann_ids(self, image_id: int) -> list[int]:
        """Ids of every annotation of an image (referred or not), ascending; indexed on first use."""
        if self._by_image is None:
            by_image: dict[int, list[int]] = defaultdict(list)
            for a in self.anns.values():
                by_image[int(a["image_id"])].append(int(a["id"]))
            self._by_image = {k: sorted(v) for k, v in by_image.items()}
        return self._by_image.get(int(image_id), [])


def _by_id(entries: Any, required: tuple[str, ...]) -> dict[int, dict]:
    """Entries keyed by their integer ``id``; entries that are not dicts, lack a required field or have a
    non-integer id / height / width / image_id are left out."""
    out: dict[int, dict] = {}
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, dict) or any(k not in e for k in required):
            continue
        try:
            ints = [int(e[k]) for k in ("id", "height", "width", "image_id") if k in required]
        except (TypeError, ValueError):
            continue
        if "file_name" in required and not isinstance(e["file_name"], str):
            continue
        out[ints[0]] = e
    return out


@dataclass
class _Entry:
    ref: dict
    sentence: dict
    sent_index: int
    image: dict
    image_path: Path
    ann_ids: list[int]
    checks: list[SegmentationCheck]


class CocoRefDataset(RefDataset):
    """Refs (already loaded) + COCO instances + images folder. Subclasses define how ``ann_id`` reads."""

    def __init__(
        self,
        refs: Sequence[dict],
        instances_json: str | Path,
        images_dir: str | Path,
        split: str,
        valid_splits: Sequence[str],
        *,
        source: str,
        text_field: str = "sent",
        skip_missing: bool = False,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.source, self.split, self.text_field = source, split, text_field
        check_split(split, valid_splits, source)
        self.images_dir = Path(images_dir)
        self.coco = CocoInstances(instances_json)
        self.strict = strict
        self._entries: list[_Entry] = []
        missing: list[Path] = []
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict):
                self._fail("bad_ref", f"refs entry {i}", f"a {type(ref).__name__}, not a dict", 1)
            elif ref.get("split") == split:
                self._index_ref(ref, skip_missing, missing)
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise MissingImageError(
                f"{len(missing)} refs of {source}/{split} name images that do not exist (e.g. {shown}); "
                f"check images_dir={self.images_dir} or pass skip_missing=True to count and skip them"
            )
        logger.info("%s/%s: using sentence field %r, one sample per sentence", source, split, text_field)
        self.report()

    def target_ann_ids(self, ref: dict) -> list[int] | None:
        """Target annotation ids of a ref ([] = no target), or None when the field is malformed."""
        raise NotImplementedError

    def _index_ref(self, ref: dict, skip_missing: bool, missing: list[Path]) -> None:
        key = f"ref {ref.get('ref_id')}"
        sentences = ref.get("sentences") or []
        n = max(1, len(sentences))
        if not sentences:
            self._skip("no_sentences", key, n=1)
            return
        ann_ids = self.target_ann_ids(ref)
        if ann_ids is None:
            self._fail("bad_ann_id", key, f"ann_id={ref.get('ann_id')!r}", n)
            return
        image_id = ref.get("image_id")
        image = self.coco.images.get(image_id) if isinstance(image_id, int) else None
        if image is None:
            self._fail("unknown_image_id", key, f"image_id={ref.get('image_id')!r}", n)
            return
        path = self.images_dir / image["file_name"]
        if not path.is_file():
            if skip_missing:
                self._skip("missing_image", key, str(path), n=n)
            else:
                missing.append(path)
            return
        h, w = int(image["height"]), int(image["width"])
        checks = []
        for a in ann_ids:
            ann = self.coco.anns.get(a)
            if ann is None:
                self._fail("unknown_ann_id", key, f"ann_id {a}", n)
                return
            chk = check_segmentation(ann.get("segmentation"), h, w)
            for why in chk.invalid:
                if self.strict:
                    raise InvalidGeometryError(f"{self.source} annotation {a}: {why}")
                self._skip("invalid_part", f"{key} ann {a}", why)
            for _ in chk.boxes:
                self._note("box_part", f"{key} ann {a}", "4 numbers read as [x, y, w, h]")
            if not chk.usable:
                self._skip("unusable_instance", key, f"annotation {a} has no valid part", n=n)
                return
            checks.append(chk)
        for j, sentence in enumerate(sentences):
            if not isinstance(sentence, dict) or not isinstance(sentence.get(self.text_field), str):
                self._fail("bad_sentence", key, f"sentence {j} lacks {self.text_field!r}", 1)
                continue
            self._entries.append(_Entry(ref, sentence, j, image, path, ann_ids, checks))

    def _fail(self, reason: str, key: str, detail: str, n: int) -> None:
        if self.strict:
            raise DatasetFormatError(f"{self.source}/{self.split} {key}: {reason} ({detail})")
        self._skip(reason, key, detail, n=n)

    def image_instances(self, sample: RefSample) -> np.ndarray:
        """Bool [N, H, W] masks of *every* annotation of the sample's image in ``instances.json``, whether
        the sentence refers to it or not (the union-of-objects baseline), in annotation-id order.
        Annotations without a usable segmentation are left out and counted in
        ``notes["image_instance_unusable"]``."""
        image_id = int(sample.meta["image_id"])
        image = self.coco.images.get(image_id)
        if image is None:
            raise ValueError(f"{sample.sample_id}: image_id {image_id} is not in {self.coco.path}")
        h, w = int(image["height"]), int(image["width"])
        masks = []
        for a in self.coco.image_ann_ids(image_id):
            chk = check_segmentation(self.coco.anns[a].get("segmentation"), h, w)
            if chk.usable:
                masks.append(decode_segmentation(chk, h, w))
            else:
                self._note("image_instance_unusable", f"image {image_id} ann {a}", "; ".join(chk.invalid))
        return np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> RefSample:
        e = self._entries[index]
        h, w = int(e.image["height"]), int(e.image["width"])
        sentences = e.ref["sentences"]
        sent_id = e.sentence.get("sent_id", e.sent_index)
        cats = e.ref.get("category_id")
        meta = {
            "ref_id": e.ref.get("ref_id"),
            "image_id": e.ref.get("image_id"),
            "ann_ids": list(e.ann_ids),
            "category_ids": cats if isinstance(cats, list) else [cats],
            "sent_id": sent_id,
            **{k: v for k, v in e.ref.items() if k not in REF_KEYS},
        }
        return RefSample(
            sample_id=f"{self.source}/{self.split}/ref{e.ref.get('ref_id')}/sent{sent_id}",
            source=self.source,
            split=self.split,
            image_path=e.image_path,
            image_size=(h, w),
            text=e.sentence[self.text_field],
            texts=[s.get(self.text_field, "") if isinstance(s, dict) else "" for s in sentences],
            masks=[decode_segmentation(c, h, w) for c in e.checks],
            no_target=not e.ann_ids,
            text_index=e.sent_index,
            meta=meta,
        )
