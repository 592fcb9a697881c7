"""gRefCOCO: ``grefs(unc).json`` + COCO ``instances.json`` + images; multi-target and no-target sentences.

``ann_id`` is a list of annotation ids; ``[-1]`` means the sentence refers to nothing (empty GT,
``no_target=True``); several ids give several instance masks. A ref whose ``no_target`` field contradicts
its ``ann_id`` is counted and skipped. The synthetic world's ``write_refcoco_style`` output loads here
unchanged. Valid splits are those present in the refs file (the public release: train, val, testA, testB).
"""

from __future__ import annotations

from pathlib import Path

from segcompass.data.coco_refs import CocoRefDataset, read_json
from segcompass.data.sample import DatasetFormatError


class GRefCocoDataset(CocoRefDataset):
    """gRefCOCO-format loader (one sample per sentence)."""

    def __init__(
        self,
        refs_json: str | Path,
        instances_json: str | Path,
        images_dir: str | Path,
        split: str,
        *,
        source: str = "grefcoco",
        text_field: str = "sent",
        skip_missing: bool = False,
        strict: bool = False,
    ) -> None:
        """
        Args:
            refs_json: ``grefs(unc).json``.
            instances_json: COCO ``instances.json``.
            images_dir: folder holding the images named in ``instances.json``.
            split: one of the splits present in the refs file.
            source: name written into the samples.
            text_field: sentence field used as the text (``sent`` as LISA/ReLA, or ``raw``).
            skip_missing: count and skip refs whose image is missing instead of raising.
            strict: raise on malformed refs and invalid polygon parts instead of counting skips.
        """
        refs = read_json(Path(refs_json), "gRefCOCO refs file")
        if not isinstance(refs, list):
            raise DatasetFormatError(f"{refs_json}: expected a JSON list of refs")
        splits = sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})
        super().__init__(
            refs, instances_json, images_dir, split, splits,
            source=source, text_field=text_field, skip_missing=skip_missing, strict=strict,
        )  # fmt: skip

    def target_ann_ids(self, ref: dict) -> list[int] | None:
        ids = ref.get("ann_id")
        if isinstance(ids, int):
            ids = [ids]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
            return None
        if -1 in ids:
            if len(ids) > 1:
                return None
            targets: list[int] = []
        else:
            targets = list(ids)
        flag = ref.get("no_target")
        if flag is not None and bool(flag) != (not targets):
            return None
        return targets
