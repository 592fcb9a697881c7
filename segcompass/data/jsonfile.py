"""Read annotation JSON in the encodings the public files use.

JSON should be UTF-8 (UTF-16/32 with a byte-order mark and a UTF-8 BOM are accepted too), but some public
annotation files are not: part of ReasonSeg is Windows-1252 (LISA's loader falls back to cp1252). A file
that is not valid in the first encoding is decoded with the fallbacks in order; which one worked is
returned so that loaders can count it. A file that no encoding decodes, or that is not JSON, is a
:class:`DatasetFormatError` naming the file — loaders decide whether that aborts or is a counted skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segcompass.data.sample import DatasetFormatError

FALLBACK_ENCODINGS: tuple[str, ...] = ("cp1252",)
"""Tried in order when a file is not UTF-8 (Windows-1252: the non-UTF-8 files of the public ReasonSeg)."""


def read_json_file(
    path: str | Path, what: str, *, fallbacks: tuple[str, ...] = FALLBACK_ENCODINGS
) -> tuple[Any, str]:
    """(parsed JSON, encoding used) of ``path``; ``what`` names the file's role in errors.

    Raises:
        DatasetFormatError: the file cannot be read, is in none of the encodings, or is not JSON.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetFormatError(f"cannot read {what} {path}: {err}") from err
    try:
        return json.loads(raw), "utf-8"  # json detects UTF-8 (with or without BOM), UTF-16 and UTF-32
    except UnicodeDecodeError as err:
        first_error: Exception = err
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"cannot read {what} {path}: not valid JSON ({err})") from err
    for encoding in fallbacks:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        try:
            return json.loads(text), encoding
        except json.JSONDecodeError as err:
            raise DatasetFormatError(
                f"cannot read {what} {path}: not valid JSON when decoded as {encoding} ({err})"
            ) from err
    tried = ", ".join(("utf-8", *fallbacks))
    raise DatasetFormatError(
        f"cannot read {what} {path}: its bytes are not valid in any of {tried} ({first_error})"
    ) from first_error
