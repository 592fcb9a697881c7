"""All-or-nothing writing of an evaluation's files (per-sample tables + summaries).

Every file is first written (each atomically, through :func:`segcompass.metrics.write_results` /
:func:`segcompass.metrics.atomic_write`) into a hidden staging folder inside ``out_dir``; only when all
of them exist are they renamed into place, the summary CSV last. An exception or KeyboardInterrupt
before that leaves ``out_dir`` as it was; one during the renames removes the files this run already
moved, so a set of results is never half there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from segcompass.metrics import MetricSummary, atomic_write, write_results

logger = logging.getLogger(__name__)

TABLE_FORMATS = ("parquet", "csv")
"""Formats of the per-sample tables."""


def result_names(stem: str, conventions: Sequence[str]) -> list[str]:
    """File names an evaluation writes: per convention ``<stem>.<conv>.{parquet,csv,summary.json}``, then
    ``<stem>.summary.csv`` (one row per convention)."""
    names = [f"{stem}.{c}.{ext}" for c in conventions for ext in (*TABLE_FORMATS, "summary.json")]
    return [*names, f"{stem}.summary.csv"]


def check_writable(out_dir: str | Path, stem: str, conventions: Sequence[str], overwrite: bool) -> None:
    """Raise FileExistsError (before any work is done) when results of this name are already there."""
    existing = [n for n in result_names(stem, conventions) if (Path(out_dir) / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{Path(out_dir)} already holds results named {stem!r} ({', '.join(existing[:3])}…); "
            "pass overwrite=True (--overwrite) or another name (--name)"
        )


def write_evaluation(
    out_dir: str | Path,
    stem: str,
    per_sample: Mapping[str, pd.DataFrame],
    summaries: Mapping[str, MetricSummary],
    summary_table: pd.DataFrame,
) -> list[Path]:
    """Write the per-convention tables and summary JSONs and the summary CSV; all or nothing."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}.staging.", dir=out))
    moved: list[Path] = []
    try:
        staged: list[Path] = []
        for conv, df in per_sample.items():
            paths = write_results(staging, df, summaries[conv], name=f"{stem}.{conv}", formats=TABLE_FORMATS)
            staged += [*paths.per_sample, paths.summary]
        staged.append(
            atomic_write(staging / f"{stem}.summary.csv", lambda p: summary_table.to_csv(p, index=False))
        )
        for p in staged:
            os.replace(p, out / p.name)
            moved.append(out / p.name)
    except BaseException:
        for p in moved:
            p.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s", ", ".join(p.name for p in moved))
    return moved
