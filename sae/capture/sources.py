"""Image–text documents to capture: a local data set readable by `datasets`, or a folder of images.

Every source is a random-access sequence of `SourceDocument`s (so torchrun ranks can take disjoint
slices). Supported `--data` paths:

* a folder with `corpus.jsonl` (the synthetic world's image–text corpus) or any `*.jsonl` / `*.json` /
  `*.parquet` / `*.csv` file of records with an image column (a path relative to the file) and a text column
  (OBELICS-style records: one image + its text);
* a folder written by `datasets.Dataset.save_to_disk` (image column as a `datasets.Image` feature or path);
* a folder of images with a `metadata.jsonl` (Hugging Face "imagefolder" layout: `file_name` + text).

`*.jsonl` records are read line by line (`records.py`): a malformed line is a bad record named by file and
line — an error before capture starts, or a counted skip with `--skip-bad` — not an exception from `datasets`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sae.images import displayed_rgb, open_image

from .records import JsonlRecords, RecordError

logger = logging.getLogger(__name__)

_RECORD_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_NOT_RECORDS = frozenset({"stage.json"})
"""Files of a records folder that are not records: what a cached stage (segcompass/stages.py, e.g. the
pipeline's corpus) records about its folder."""


class SourceError(ValueError):
    """A document that cannot be read (missing or undecodable image, empty text)."""


@dataclass
class SourceDocument:
    """One image + text to run through the backbone."""

    doc_id: int
    """Index in the source (dense, 0-based): the store's document id."""
    source_id: str
    """The record's own id or file name."""
    image: Image.Image
    """RGB image as displayed (EXIF orientation applied)."""
    text: str
    """Text placed in the prompt (after the image unless instruction-first is chosen)."""


class DocumentSource(Sequence[SourceDocument]):
    """Random-access documents from a `datasets.Dataset` with an image and a text column."""

    def __init__(
        self,
        dataset,
        root: Path,
        image_column: str,
        text_column: str,
        id_column: str | None,
        kind: str,
        fingerprint: str | None = None,
    ):
        missing = {image_column, text_column} - set(dataset.column_names)
        if missing:
            raise SourceError(f"{root}: no column(s) {sorted(missing)}; columns are {dataset.column_names}")
        self.dataset = dataset
        self.root = root
        self.image_column = image_column
        self.text_column = text_column
        self.id_column = id_column if id_column in dataset.column_names else None
        self.kind = kind
        self._fingerprint = fingerprint or getattr(dataset, "_fingerprint", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> SourceDocument:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        try:
            row = self.dataset[index]
        except RecordError as err:  # a malformed corpus line
            raise SourceError(f"document {index}: {err}") from None
        source_id = str(row.get(self.id_column)) if self.id_column else str(index)
        text = row.get(self.text_column)
        if not isinstance(text, str) or not text.strip():
            raise SourceError(f"document {index} ({source_id}): empty text")
        return SourceDocument(
            index, source_id, self._image(row.get(self.image_column), index, source_id), text
        )

    @property
    def bad_records(self) -> dict[int, str]:
        """Documents whose record cannot be parsed (a malformed JSON line), with why; reading one raises
        `SourceError`, so `--skip-bad` skips them like undecodable images."""
        return {i: f"document {i}: {why}" for i, why in getattr(self.dataset, "bad", {}).items()}

    def _image(self, value: Any, index: int, source_id: str) -> Image.Image:
        if isinstance(value, Image.Image):  # decoded by `datasets`: orient it if it is still tagged
            return displayed_rgb(value, f"document {index} ({source_id})")
        if isinstance(value, dict) and value.get("path"):
            value = value["path"]
        if not isinstance(value, str) or not value:
            raise SourceError(f"document {index} ({source_id}): no image")
        path = Path(value) if Path(value).is_absolute() else self.root / value
        try:
            return open_image(path)  # as displayed: EXIF orientation applied, 8-bit RGB
        except FileNotFoundError:
            raise SourceError(f"document {index} ({source_id}): image {path} does not exist") from None
        except OSError as err:  # ImageReadError: exists but cannot be decoded
            raise SourceError(
                f"document {index} ({source_id}): image {path} cannot be decoded ({err})"
            ) from None

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data in the store's metadata."""
        return {
            "path": str(self.root),
            "kind": self.kind,
            "num_documents": len(self),
            "fingerprint": self._fingerprint,
        }


def open_source(
    path: str | Path, *, image_column: str = "image", text_column: str = "text", id_column: str | None = "id"
) -> DocumentSource:
    """Open a local image–text data set (see the module docstring for the layouts)."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    if path.is_file():
        files, root = [path], path.parent
    elif (path / "dataset_info.json").exists() or (path / "state.json").exists():
        ds = datasets.load_from_disk(str(path))
        return DocumentSource(ds, path, image_column, text_column, id_column, "saved-dataset")
    elif (path / "metadata.jsonl").exists():
        ds = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
        return DocumentSource(ds, path, image_column, text_column, id_column or "file_name", "imagefolder")
    else:
        files = sorted(
            f for f in path.iterdir() if f.suffix in _RECORD_SUFFIXES and f.name not in _NOT_RECORDS
        )
        root = path
    if not files:
        raise SourceError(
            f"{path}: no records (*.jsonl, *.json, *.parquet, *.csv), saved data set or metadata.jsonl"
        )
    builders = {_RECORD_SUFFIXES[f.suffix] for f in files}
    if len(builders) > 1:
        raise SourceError(
            f"{path}: mixed record formats {sorted(builders)}; keep one kind of file per folder"
        )
    if all(f.suffix == ".jsonl" for f in files):
        ds = JsonlRecords(files)  # line by line: a malformed line is a named, skippable record
    else:
        builder = builders.pop()
        try:
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
        except Exception as err:  # datasets wraps the parser's error in DatasetGenerationError
            cause = err.__cause__ or err
            raise SourceError(
                f"{', '.join(map(str, files))}: cannot be read as {builder} records "
                f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}); fix the file"
            ) from None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return DocumentSource(ds, root, image_column, text_column, id_column, "records", digest.hexdigest()[:16])
