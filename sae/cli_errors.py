"""The command lines' one error path: a known failure becomes one sentence naming the file and what to do.

Known failures are bad input (`ValueError`, `TypeError`: wrong settings, a corrupt or mismatched store, a
malformed corpus line), missing or existing files, I/O failures (`OSError`: a full disk, a read-only
folder) and a folder locked by another run. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

from sae.files import FolderLockedError, WriteError

KNOWN = (ValueError, TypeError, OSError, FolderLockedError)
"""Exception types that are reported as one sentence (exit code 2) instead of a traceback."""

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def describe_failure(err: BaseException) -> str | None:
    """The sentence for a known failure; None for anything else (a bug: show its traceback)."""
    if not isinstance(err, KNOWN):
        return None
    if isinstance(err, OSError) and err.errno is not None:
        where = err.filename if err.filename is not None else "the output"
        if err.errno in _FULL:
            return (
                f"no space left to write {where} ({err.strerror}): free some space or write to another disk, "
                "then run the command again (with --resume where it has one: finished work is kept)"
            )
        if err.errno in _READ_ONLY:
            return f"cannot write {where} ({err.strerror}): choose a folder you can write to, or fix its permissions"
        if err.errno == errno.ENOENT:
            return f"{where} does not exist; check the path"
        if isinstance(err, WriteError):
            return (
                f"could not write {where} ({err.strerror}): check the free space and the disk, then run the "
                "command again (with --resume where it has one: finished work is kept)"
            )
        return f"{err.strerror}: {where}"
    return str(err) or type(err).__name__
