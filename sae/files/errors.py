"""Known file failures as exceptions that name the file: a write that failed, a file that cannot be parsed.

Libraries report a full disk in their own ways (torch's zip writer raises `RuntimeError("... unexpected
pos ...")`, safetensors a `SafetensorError`); `write_failure` turns any exception raised while writing a
file into an `OSError` (`WriteError`) with an errno and the file name, so one error path (`sae.cli_errors`)
can tell the user what happened and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, NoReturn

LOW_SPACE_BYTES = 64 << 20
"""Below this much free space, a write that failed without an errno is taken for a full disk."""

_LIBRARY_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed", "I/O error")
_OS_ERROR = re.compile(r"os error (\d+)")
"""How safetensors (Rust) names the errno of an I/O failure: "... No space left on device (os error 28)"."""


class WriteError(OSError):
    """Writing `filename` failed (errno ENOSPC for a full disk, else the cause's errno or EIO)."""


class CorruptFileError(ValueError):
    """A file that exists but cannot be parsed (the message names it and what to do)."""


def write_failure(err: BaseException, path: str | os.PathLike) -> OSError | None:
    """The `OSError` to raise for `err`, raised while writing `path`; None when `err` is not an I/O failure
    (a bug, an interrupt), which the caller re-raises unchanged."""
    if isinstance(err, WriteError):
        return err
    text = str(err)
    if isinstance(err, OSError):
        code = err.errno
    elif isinstance(err, Exception) and (found := _OS_ERROR.search(text)):
        code = int(found.group(1))
    elif isinstance(err, Exception) and any(marker in text for marker in _LIBRARY_WRITE_FAILURES):
        code = errno.ENOSPC if _low_space(path) else errno.EIO
    else:
        return None
    if code is None:
        return None
    reason = os.strerror(code) if code != errno.EIO else f"{os.strerror(code)} ({err})"
    return WriteError(code, reason, str(path))


def raise_write_failure(err: BaseException, path: str | os.PathLike) -> NoReturn:
    """Raise `write_failure(err, path)` (chained to `err`), or `err` itself when it is not an I/O failure.
    Call it from an `except` block that has already cleaned up."""
    failure = write_failure(err, path)
    if failure is None or failure is err:
        raise err
    raise failure from err


def _low_space(path: str | os.PathLike) -> bool:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < LOW_SPACE_BYTES
    except OSError:
        return False


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse the JSON file `path`; a damaged one raises `CorruptFileError` naming it (not a bare
    `JSONDecodeError` that names no file)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(
            f"{what} {path} is damaged and cannot be parsed ({err}); restore it, or redo the step that wrote it"
        ) from None
