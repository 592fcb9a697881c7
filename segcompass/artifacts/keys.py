"""Keys and lookups shared by the artefacts: short setting hashes, the backbone's key part, and the
lookup that also takes a finished folder of the previous layout."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from segcompass.stages import Stage, ensure_stage, find_stage, is_built

logger = logging.getLogger(__name__)

C = TypeVar("C")

BUILD_COMMAND = "segcompass-analyze pipeline --out <run folder> (or segcompass ablation --out <run folder>)"
"""What builds the artefacts of a run folder (named when one is missing)."""


def stage_key(*parts) -> str:
    """Short hash of settings (keys of run folders: head warm starts, training runs, previous layout)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def backbone_key(spec: str, backbone) -> str:
    """Key part naming a backbone: the spec and what it resolved to (a `warm:` spec resolves to a cache
    folder named by its warm-up config, so a new warm-up default never reuses stages of the old one)."""
    return f"{spec}@{backbone.name_or_path}"


def ensure_artifact(
    stage: Stage[C], config: C, out: Path, legacy: Path | None, complete: Callable[[Path], bool]
) -> Path:
    """`stage`'s folder for `config` under `out` — or `legacy`, a finished folder of the previous layout
    (`complete` says which are) — built when neither exists (logged)."""
    if (
        legacy is not None
        and legacy.is_dir()
        and not complete(legacy)
        and not is_built(stage.path(config, out))
    ):
        logger.warning(
            "%s: %s is an unfinished folder of the previous layout; not continued", stage.name, legacy
        )
    old = [legacy] if legacy is not None else []
    path, cached = ensure_stage(
        stage,
        config,
        out,
        find=lambda c, root: find_stage(stage, c, root, legacy=old, legacy_complete=complete),
    )
    if cached:
        logger.info("reusing %s %s", stage.name, path)
    return path
