"""Tables of atom naming: the per-atom table and the consistency summary (own vs shuffled labels, models)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.atoms.scan import AtomScan

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


def consistency_summary(results: list[NamingResult]) -> pd.DataFrame:
    """Per model and modality: labelled atoms, mean purity, and mean / median held-out AUC, precision and
    recall of the atoms' own labels vs the shuffled-label baseline."""
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
                rows.append(
                    {
                        "model": r.model,
                        "modality": modality,
                        "labels": labels,
                        "atoms": len(own),
                        "mean_purity": purity,
                        "mean_auc": d["auc"].mean(),
                        "median_auc": d["auc"].median(),
                        "mean_precision": d["precision"].mean(),
                        "mean_recall": d["recall"].mean(),
                    }
                )
    return pd.DataFrame(rows)
