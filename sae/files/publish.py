"""Publish a set of files as one unit: `<parent>/<name>` is a symbolic link to a hidden, complete version
folder, switched to a new version with one atomic rename, so a reader sees the old set or the new set and
never a mix of the two (and a run killed while writing leaves the old set in place).

    <parent>/<name>       -> .<name>.v<ns>-<pid>     (the current version)
    <parent>/.<name>.v…/                             (complete versions; older ones are removed)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .atomic import fsync_dir, fsync_tree
from .errors import raise_write_failure
from .modes import apply_umask_tree


def replace_link(path: str | os.PathLike, target: str) -> None:
    """Make `path` a symbolic link to `target` (relative to its folder), atomically; a regular file or link
    there is replaced, a real folder is refused."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise FileExistsError(
            f"{path} is a folder, not a report link: move it away (reports publish {path} as a link)"
        )
    if path.is_symlink() and os.readlink(path) == target:
        return
    tmp = path.with_name(f".{path.name}.link-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _versions(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.glob(f".{name}.v*") if p.is_dir() and not p.is_symlink()]


@contextlib.contextmanager
def versioned_folder(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """Yield a new, empty version folder for `<parent>/<name>`; when the block ends without an error the
    version is given the umask's modes, fsynced and published; on an error (or Ctrl-C) it is removed and
    the current version stays."""
    parent = Path(parent)
    link = parent / name
    version = parent / f".{name}.v{time.time_ns()}-{os.getpid()}"
    try:
        version.mkdir(parents=True)
        yield version
        apply_umask_tree(version)
        fsync_tree(version)
        replace_link(link, version.name)
    except BaseException as err:
        shutil.rmtree(version, ignore_errors=True)
        raise_write_failure(err, link)
    fsync_dir(parent)
    for old in _versions(parent, name):  # older versions, and any left by a killed run
        if old != version:
            shutil.rmtree(old, ignore_errors=True)
