"""JSON Lines records read line by line, so one malformed line is a named, countable bad record instead of
an exception from inside `datasets` that names neither the file nor the line.

The files are scanned once (each line parsed, its byte offset kept); a record is parsed again when it is
read, so memory holds offsets only. Blank lines are not records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class RecordError(ValueError):
    """A record that is not a JSON object (the message names the file and line)."""


class JsonlRecords(Sequence[dict[str, Any]]):
    """The records of one or more `.jsonl` files, in file order; `bad` maps the index of each malformed
    record to why (reading it raises `RecordError` with that reason)."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = [Path(f) for f in files]
        file_index, offsets, lines = [], [], []
        self.bad: dict[int, str] = {}
        columns: dict[str, None] = {}
        for fi, path in enumerate(self.files):
            offset = 0
            with open(path, "rb") as fh:
                for number, raw in enumerate(fh, start=1):
                    if raw.strip():
                        problem = _problem(raw)
                        if problem is None:
                            columns.update(dict.fromkeys(json.loads(raw)))
                        else:
                            self.bad[len(offsets)] = f"{path} line {number} {problem}"
                        file_index.append(fi)
                        offsets.append(offset)
                        lines.append(number)
                    offset += len(raw)
        self._file = np.asarray(file_index, dtype=np.int32)
        self._offset = np.asarray(offsets, dtype=np.int64)
        self._line = np.asarray(lines, dtype=np.int64)
        self.column_names = list(columns)

    def __len__(self) -> int:
        return len(self._offset)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index in self.bad:
            raise RecordError(self.bad[index])
        with open(self.files[int(self._file[index])], "rb") as fh:
            fh.seek(int(self._offset[index]))
            return json.loads(fh.readline())


def _problem(raw: bytes) -> str | None:
    """Why a line is not a record (None when it is one)."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"is not valid JSON ({err})"
    if not isinstance(value, dict):
        return f"is a JSON {type(value).__name__}, not an object with the record's fields"
    return None
