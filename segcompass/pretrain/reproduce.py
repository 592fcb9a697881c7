"""Reproduce a committed stage of the stack: rebuild it from the config its `stage.json` records, in a fresh
cache, and compare every tensor with the committed weights (`segcompass pretrain --reproduce <key>`)."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from segcompass.committed import (
    STAGE_FILE,
    CommittedCheckpointError,
    WeightComparison,
    committed_root,
    committed_stage,
    compare_weights,
    cpu_name,
    verify,
)
from segcompass.stages import Stage, build_stage

from .stack import ALIGN, INSTRUCT, REASON, TEXT, VISION, VISION_FINAL

logger = logging.getLogger(__name__)

STACK_STAGES: dict[str, Stage] = {s.name: s for s in (TEXT, REASON, VISION, VISION_FINAL, ALIGN, INSTRUCT)}
"""The stack's stages by name (what a committed `stage.json` names)."""


@dataclass(frozen=True)
class Reproduction:
    """A committed stage rebuilt and compared with the committed weights."""

    key: str
    """The committed stage's key."""
    threads: int
    """torch threads of the rebuild."""
    wall_s: float
    """Seconds the rebuild took (stages it starts from included, unless committed)."""
    weights: WeightComparison
    """Tensor by tensor against the committed folder; `weights.identical` is the verdict."""
    built_on: str
    """The CPU the committed stage was built on (the manifest's note; "" when unrecorded)."""
    cpu: str
    """The CPU of this rebuild (bit-for-bit agreement is expected on the same kind only)."""


def committed_stack_stage(key: str, root: Path | None = None) -> tuple[Stage, dict, Path]:
    """(stage, its config, the verified committed folder) of a committed stack stage; `CommittedCheckpointError`
    when `key` is not committed, names another stage, or was built by another version of the code."""
    root = root if root is not None else committed_root()
    entry = committed_stage(key, root)
    if entry is None or root is None:
        raise CommittedCheckpointError(
            f"{key!r} is not a committed stage (no entry in {root or 'checkpoints/'})"
        )
    folder = verify(entry, root)
    record = json.loads((folder / STAGE_FILE).read_text())
    stage = STACK_STAGES.get(record["stage"])
    if stage is None:
        raise CommittedCheckpointError(f"{key}: {record['stage']!r} is not a stage of the stack")
    if record["version"] != stage.version or stage.key(record["config"]) != key:
        raise CommittedCheckpointError(
            f"{key} was built by {record['stage']} version {record['version']}; this code builds version "
            f"{stage.version} (key {stage.key(record['config'])}): rebuild the stage and commit it again"
        )
    return stage, record["config"], folder


def reproduce_committed(key: str, threads: int = 0, work_dir: str | Path | None = None) -> Reproduction:
    """Rebuild committed stage `key` from its recorded config in a temporary cache (stages it starts from:
    committed copies, or built there) with `threads` torch threads (0: as it was built), and compare."""
    root = committed_root()
    stage, config, committed = committed_stack_stage(key, root)
    entry = committed_stage(key, root)
    threads = threads or entry.threads
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segcompass-reproduce-", dir=work_dir) as cache:
        logger.info("reproducing %s with %d threads in %s", key, threads, cache)
        built = build_stage(stage, config, cache, force=True)
        weights = compare_weights(built, committed)
    wall = time.perf_counter() - start
    return Reproduction(key, threads, wall, weights, entry.notes.get("cpu", ""), cpu_name())
