"""The one checkpoint layout of every trainer: `<out>/checkpoints/<prefix>-<N>/`, written atomically
(`staged_folder`: `.tmp-…`, umask modes, fsync, rename), never overwritten, complete when its marker file
(written last) exists, pruned to the newest few. SAE training numbers its checkpoints by tokens
(`tokens-<N>`), joint training by steps (`step-<N>`); each writes its own files into the folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .atomic import staged_folder

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk."""

    path: Path
    index: int
    """Its number: tokens seen (SAE training) or optimiser steps (joint training)."""

    @property
    def tokens(self) -> int:
        return self.index

    @property
    def step(self) -> int:
        return self.index


@dataclass(frozen=True)
class CheckpointSeries:
    """The checkpoints of one kind of run in `<out>/checkpoints/`."""

    prefix: str
    """Folder name before the number (`tokens`, `step`)."""
    digits: int
    """Zero-padded width of the number."""
    marker: str
    """File written last: a folder holding it is complete."""

    def path(self, out: str | os.PathLike, index: int) -> Path:
        """The folder of checkpoint `index`."""
        return Path(out) / CHECKPOINT_DIR / f"{self.prefix}-{index:0{self.digits}d}"

    def list(self, out: str | os.PathLike) -> list[Checkpoint]:
        """Complete checkpoints in `out`, oldest first."""
        root = Path(out) / CHECKPOINT_DIR
        name = re.compile(rf"^{re.escape(self.prefix)}-(\d+)$")
        found = []
        for p in root.iterdir() if root.is_dir() else []:
            m = name.match(p.name)
            if m and (p / self.marker).exists():
                found.append(Checkpoint(p, int(m.group(1))))
        return sorted(found, key=lambda c: c.index)

    def remove_temporaries(self, out: str | os.PathLike) -> None:
        """Delete half-written checkpoint folders left by a killed run."""
        root = Path(out) / CHECKPOINT_DIR
        for p in root.glob(".tmp-*") if root.is_dir() else []:
            logger.info("removing the unfinished checkpoint %s", p)
            shutil.rmtree(p, ignore_errors=True)

    @contextmanager
    def write(self, out: str | os.PathLike, index: int, keep: int) -> Iterator[Path]:
        """Yield the temporary folder of checkpoint `index` (write the marker last); on success rename it
        into place, then delete all but the newest `keep` checkpoints (0: keep all)."""
        final = self.path(out, index)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise FileExistsError(f"checkpoint {final} already exists; checkpoints are never overwritten")
        with staged_folder(final) as tmp:
            yield tmp
        logger.info("checkpoint %s", final)
        if keep > 0:
            for old in self.list(out)[:-keep]:
                shutil.rmtree(old.path, ignore_errors=True)
