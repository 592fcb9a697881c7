"""Aggregation of instance coverage: per-(ranking, seed, group) sums → curves and AUC tables.

Only sums over K are kept while documents stream, so memory does not grow with the store.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd


class CoverageSums:
    """Per (ranking, seed, group): summed per-instance coverage, pooled pixels, instance count."""

    def __init__(self, n_k: int) -> None:
        self.cov = defaultdict(lambda: np.zeros(n_k))
        self.px = defaultdict(lambda: np.zeros(n_k))
        self.total = defaultdict(float)
        self.count = defaultdict(int)
        self.expected = defaultdict(lambda: np.zeros(n_k))
        self.docs = defaultdict(int)

    def add(self, key, covered: np.ndarray, totals: np.ndarray, share: np.ndarray) -> None:
        """covered [I, K] pixels, totals [I] pixels, share [K] budget / tokens."""
        self.cov[key] += (covered / totals[:, None]).sum(0)
        self.px[key] += covered.sum(0)
        self.total[key] += float(totals.sum())
        self.count[key] += len(totals)
        self.expected[key] += share * len(totals)
        self.docs[key] += 1  # called once per document and key


def auc_from_zero(ks: np.ndarray, cov: np.ndarray) -> float:
    """Area under coverage vs K/100 with (0, 0) prepended (random tokens: ≈ 0.5 on a grid up to 100 %)."""
    return float(np.trapezoid(np.concatenate([[0.0], cov]), np.concatenate([[0.0], ks / 100])))


def coverage_tables(
    sums: CoverageSums, ks: np.ndarray, model: str, seeds: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, auc) tables of one model; the random baseline as mean and std over its seeds."""
    curve_rows, auc_rows = [], []
    groups = sorted({k[2] for k in sums.count})
    rankings = list(dict.fromkeys(k[0] for k in sums.count if k[0] != "random"))
    for g in groups:
        rand = [sums.cov[("random", s, g)] / sums.count[("random", s, g)] for s in range(seeds)]
        rand_px = [sums.px[("random", s, g)] / sums.total[("random", s, g)] for s in range(seeds)]
        rand_auc = [auc_from_zero(ks, c) for c in rand]
        ddof = 1 if seeds > 1 else 0
        base = {
            "model": model,
            "group": g,
            "instances": sums.count[("random", 0, g)],
            "documents": sums.docs[("random", 0, g)],
        }
        expected = sums.expected[("random", 0, g)] / sums.count[("random", 0, g)]
        for r in rankings:
            key = (r, -1, g)
            cov = sums.cov[key] / sums.count[key]
            px = sums.px[key] / sums.total[key]
            for j, k in enumerate(ks):
                curve_rows.append(
                    {
                        **base,
                        "ranking": r,
                        "k": k,
                        "coverage": cov[j],
                        "coverage_std": np.nan,
                        "pixel_coverage": px[j],
                        "expected_random": expected[j],
                    }
                )
            auc_rows.append(
                {
                    **base,
                    "ranking": r,
                    "auc": auc_from_zero(ks, cov),
                    "auc_std": np.nan,
                    "random_auc": np.mean(rand_auc),
                }
            )
        mean, std = np.mean(rand, 0), np.std(rand, 0, ddof=ddof)
        px_mean = np.mean(rand_px, 0)
        for j, k in enumerate(ks):
            curve_rows.append(
                {
                    **base,
                    "ranking": "random",
                    "k": k,
                    "coverage": mean[j],
                    "coverage_std": std[j],
                    "pixel_coverage": px_mean[j],
                    "expected_random": expected[j],
                }
            )
        auc_rows.append(
            {
                **base,
                "ranking": "random",
                "auc": float(np.mean(rand_auc)),
                "auc_std": float(np.std(rand_auc, ddof=ddof)),
                "random_auc": float(np.mean(rand_auc)),
            }
        )
    cols = [
        "model",
        "ranking",
        "group",
        "k",
        "coverage",
        "coverage_std",
        "pixel_coverage",
        "expected_random",
        "instances",
        "documents",
    ]
    curves = pd.DataFrame(curve_rows)[cols]
    auc = pd.DataFrame(auc_rows)
    auc["auc_gain"] = auc["auc"] - auc["random_auc"]
    auc = auc[
        ["model", "ranking", "group", "auc", "auc_std", "random_auc", "auc_gain", "instances", "documents"]
    ]
    return curves, auc
