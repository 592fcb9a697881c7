"""Tables of atom naming: the per-atom table and the consistency summary (own vs shuffled labels, models)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.atoms.scan import AtomScan
from analysis.common.stats import Interval, bootstrap_ratio_ci

if TYPE_CHECKING:
    from analysis.atoms.naming import NamingResult

TABLE_COLUMNS = [
    "model",
    "atom",
    "frequency",
    "mean_act",
    "max_act",
    "modality",
    "label",
    "label_kind",
    "purity",
    "auc",
    "precision",
    "recall",
    "shuffled_auc",
    "n_examples",
    "n_described",
    "val_positives",
    "val_judged",
]


def build_table(model: str, scan: AtomScan, labels: pd.DataFrame, per_atom: pd.DataFrame) -> pd.DataFrame:
    """Scan statistics, labels and held-out consistency merged into one row per atom (`TABLE_COLUMNS` first)."""
    top = scan.top_values[:, 0]
    stats = pd.DataFrame(
        {
            "model": model,
            "atom": scan.atoms,
            "frequency": scan.frequency,
            "mean_act": scan.mean_active,
            "max_act": np.where(scan.active > 0, top, np.nan),
        }
    )
    table = stats.merge(labels, on="atom", how="left").merge(per_atom, on="atom", how="left")
    for col in TABLE_COLUMNS:
        if col not in table:
            table[col] = np.nan
    return table[TABLE_COLUMNS + [c for c in table.columns if c not in TABLE_COLUMNS]]


def atom_table(results: NamingResult | list[NamingResult], sort_by: str | None = None) -> pd.DataFrame:
    """The per-atom table (atom, frequency, mean_act, label, purity, auc, precision, recall, n_examples, ...)
    of one or several results, optionally sorted (descending) by a column."""
    results = list(results) if isinstance(results, list | tuple) else [results]
    table = pd.concat([r.table for r in results], ignore_index=True)
    if sort_by is not None:
        table = table.sort_values(
            ["model", sort_by], ascending=[True, False], na_position="last", kind="stable"
        )
    return table.reset_index(drop=True)


def _auc_ci(d: pd.DataFrame, n_boot: int, confidence: float, seed: int) -> Interval:
    """CI of the mean AUC of `d`'s rows when atoms are resampled (a shuffled-label atom has several rows)."""
    per_atom = d.dropna(subset=["auc"]).groupby("atom")["auc"].agg(["sum", "count"])
    return bootstrap_ratio_ci(
        per_atom["sum"].to_numpy(),
        per_atom["count"].to_numpy(),
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )


def consistency_summary(
    results: list[NamingResult], *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per model and modality: labelled atoms, mean purity, and mean / median held-out AUC (with a CI of the
    mean: atoms resampled), precision and recall of the atoms' own labels vs the shuffled-label baseline."""
    rows = []
    for r in results:
        t = r.table[r.table["label"].notna()]
        sh = r.shuffled.merge(t[["atom", "modality"]], on="atom") if len(r.shuffled) else None
        for modality in ("image", "text", "all"):
            own = t if modality == "all" else t[t["modality"] == modality]
            if own.empty:
                continue
            variants = [("own", own, own["purity"].mean())]
            if sh is not None:
                variants.append(
                    ("shuffled", sh if modality == "all" else sh[sh["modality"] == modality], np.nan)
                )
            for labels, d, purity in variants:
                ci = _auc_ci(d, n_boot, confidence, seed)
                rows.append(
                    {
                        "model": r.model,
                        "modality": modality,
                        "labels": labels,
                        "atoms": len(own),
                        "mean_purity": purity,
                        "mean_auc": d["auc"].mean(),
                        "auc_ci_low": ci.low,
                        "auc_ci_high": ci.high,
                        "median_auc": d["auc"].median(),
                        "mean_precision": d["precision"].mean(),
                        "mean_recall": d["recall"].mean(),
                    }
                )
    return pd.DataFrame(rows)
