"""File modes from the process umask: what `open()` would give, also for files our libraries create 0600.

safetensors and `tempfile.mkstemp` create files readable by their owner only, whatever the umask; a store or
an SAE written that way cannot be read by colleagues on a shared machine although its manifest can. Every
file we publish is given `0o666 & ~umask` (folders `0o777 & ~umask`) before it is moved into place.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_umask() -> int:
    """The umask of this process (read from /proc where possible: setting it to probe is not thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give `path` the mode a plain `open()` / `mkdir()` would have given it under the current umask."""
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~process_umask())


def apply_umask_tree(root: str | os.PathLike) -> None:
    """`apply_umask` to `root` and everything below it (symbolic links are left alone)."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                apply_umask(p)
    apply_umask(root)
