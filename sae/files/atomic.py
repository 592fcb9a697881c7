"""Atomic writes: a file or a folder is built under a temporary name beside its target, given the umask's
mode, fsynced and renamed into place, so a reader (or a run killed at any moment) sees the old content or
the new one, never a half-written file. This is the one implementation every writer in the project uses.

A failure removes the temporary and is raised as a `WriteError` naming the target when it is an I/O
failure (full disk, read-only folder), unchanged otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import raise_write_failure
from .modes import apply_umask, apply_umask_tree


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in folder `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file below `root`, then the folders."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                fsync_file(p)
        fsync_dir(dirpath)


def temporary_name(path: Path, tag: str = "tmp") -> Path:
    """`.<name>.<tag>-<pid>` beside `path` (hidden; one per process)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then publish it as `path` atomically."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        apply_umask(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise_write_failure(err, path)
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder `.tmp-<name>-<pid>` beside `final`; on success it is given the
    umask's modes, fsynced and renamed to `final` (which must not exist); on failure it is removed."""
    final = Path(final)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        apply_umask_tree(tmp)
        fsync_tree(tmp)
        os.rename(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_write_failure(err, final)
    fsync_dir(final.parent)
