"""Atomic writers of evaluation results: per-sample table (Parquet or CSV) + summary JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from sae import files
from segcompass.metrics.conventions import MetricSummary

logger = logging.getLogger(__name__)


class ResultPaths(NamedTuple):
    """Files written by :func:`write_results`."""

    per_sample: list[Path]
    """One file per requested table format."""
    summary: Path
    """The summary JSON (numbers + protocol)."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """`sae.files.atomic_write` (temporary file, umask mode, fsync, rename), creating the folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.atomic_write(path, write)


def write_results(
    out_dir: str | Path,
    per_sample: pd.DataFrame,
    summary: MetricSummary,
    name: str = "results",
    formats: Sequence[str] = ("parquet",),
) -> ResultPaths:
    """Write ``<name>.parquet`` / ``<name>.csv`` (per sample) and ``<name>.summary.json``, each atomically.

    The summary JSON holds ``{"protocol": …, "giou": …, …}`` so a number is never stored without the
    convention, unit, split, sample count and decoding that produced it.
    """
    out = Path(out_dir)
    tables = []
    for fmt in formats:
        if fmt == "parquet":
            tables.append(
                atomic_write(out / f"{name}.parquet", lambda p: per_sample.to_parquet(p, index=False))
            )
        elif fmt == "csv":
            tables.append(atomic_write(out / f"{name}.csv", lambda p: per_sample.to_csv(p, index=False)))
        else:
            raise ValueError(f"unknown table format {fmt!r} (expected 'parquet' or 'csv')")
    text = json.dumps(summary.to_dict(), indent=2, sort_keys=False, default=str)
    js = atomic_write(out / f"{name}.summary.json", lambda p: p.write_text(text + "\n", encoding="utf-8"))
    logger.info("wrote %d per-sample rows and the summary to %s", len(per_sample), out)
    return ResultPaths(tables, js)
