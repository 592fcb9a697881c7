"""After a finished run: delete its resume checkpoints (`TrainConfig.keep_final_checkpoints` keeps them).

A checkpoint holds the SAE, the optimiser's two moments and the feature statistics — several GB at
65536 × 3584 — and is only good for resuming a run, which a finished run refuses to do. They are deleted
only after the final SAE and its metadata are in place, so a crash in between leaves them, not a run
without an SAE.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .checkpoint import CHECKPOINT_DIR, list_checkpoints, remove_temporaries

logger = logging.getLogger(__name__)


def remove_resume_checkpoints(out: str | Path) -> tuple[int, int]:
    """Delete every complete and half-written checkpoint of the run in `out`, and `checkpoints/` itself
    when nothing else is in it. Returns (checkpoints removed, bytes freed)."""
    root = Path(out) / CHECKPOINT_DIR
    if not root.is_dir():
        return 0, 0
    found = list_checkpoints(Path(out))
    freed = 0
    for ckpt in found:
        freed += sum(f.stat().st_size for f in ckpt.path.rglob("*") if f.is_file())
        shutil.rmtree(ckpt.path)
    remove_temporaries(Path(out))
    try:
        root.rmdir()
    except OSError:
        logger.info("kept %s: it holds files that are not checkpoints", root)
    if found:
        logger.info(
            "removed %d resume checkpoint(s) of the finished run (%.1f MiB); keep them with "
            "--keep-final-checkpoints true",
            len(found),
            freed / 2**20,
        )
    return len(found), freed
