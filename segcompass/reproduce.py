"""Reproduce a committed stage: rebuild it from the config its `stage.json` records, in a fresh cache, and
compare every tensor with the committed weights (`segcompass pretrain --reproduce <key>` for the stack's
stages, `segcompass warmup-sam --reproduce <key>` for the tiny SAM)."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

logger = logging.getLogger(__name__)


CommittableStages = dict[str, tuple[Stage, Callable[[dict], Any]]]
"""Stages a command can reproduce, by name (what a committed `stage.json` names), each with the function that
turns the config its `stage.json` records back into the stage's config (`pretrain.stack.COMMITTABLE`,
`sam_warmup.cache.COMMITTABLE`)."""


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


def committed_stage_config(
    key: str, stages: CommittableStages, root: Path | None = None
) -> tuple[Stage, Any, Path]:
    """(stage, its config, the verified committed folder) of a committed stage; `CommittedCheckpointError`
    when `key` is not committed, is none of `stages`, or was built by another version of the code."""
    root = root if root is not None else committed_root()
    entry = committed_stage(key, root)
    if entry is None or root is None:
        raise CommittedCheckpointError(
            f"{key!r} is not a committed stage (no entry in {root or 'checkpoints/'})"
        )
    folder = verify(entry, root)
    record = json.loads((folder / STAGE_FILE).read_text())
    known = stages.get(record["stage"])
    if known is None:
        raise CommittedCheckpointError(
            f"{key}: {record['stage']!r} is not reproduced by this command (it reproduces {sorted(stages)})"
        )
    stage, parse = known
    config = parse(record["config"])
    if record["version"] != stage.version or stage.key(config) != key:
        raise CommittedCheckpointError(
            f"{key} was built by {record['stage']} version {record['version']}; this code builds version "
            f"{stage.version} (key {stage.key(config)}): rebuild the stage and commit it again"
        )
    return stage, config, folder


def reproduce_committed(
    key: str, stages: CommittableStages, threads: int = 0, work_dir: str | Path | None = None
) -> Reproduction:
    """Rebuild committed stage `key` from its recorded config in a temporary cache (stages it starts from:
    committed copies, or built there) with `threads` torch threads (0: as it was built), and compare."""
    root = committed_root()
    stage, config, committed = committed_stage_config(key, stages, root)
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


def print_reproduction(key: str, stages: CommittableStages, threads: int = 0) -> None:
    """What `--reproduce <key>` does: rebuild, print the verdict as JSON, exit with 1 when a tensor differs."""
    result = reproduce_committed(key, stages, threads)
    weights = result.weights
    report = {
        "key": result.key,
        "reproduced": weights.identical,
        "tensors": weights.tensors,
        "differing": list(weights.differing),
        "max_abs_diff": weights.max_abs_diff if math.isfinite(weights.max_abs_diff) else None,
        "threads": result.threads,
        "built_on": result.built_on,
        "cpu": result.cpu,
        "wall_s": round(result.wall_s, 1),
    }
    print(json.dumps(report, indent=2))
    if not weights.identical:
        raise SystemExit(1)
