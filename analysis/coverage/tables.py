"""Aggregation of instance coverage: per-(ranking, seed, group) sums → curves, AUC and contrast tables.

Only sums over K are kept while documents stream, plus one number per document and key (its instances'
summed AUC), so memory grows with documents, never with tokens. The AUC of the mean curve equals the mean
of the instances' AUCs (the trapezoid rule is linear), so its CI resamples documents (a cluster bootstrap).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.common.stats import Interval, bootstrap_ratio_ci, bootstrap_ratio_diff_ci

CONTRASTS = (("referred", "distractor"),)
"""Group pairs compared per model and ranking (first − second, paired by document)."""


@dataclass(frozen=True)
class Bootstrap:
    """Settings of the documents' bootstrap."""

    n_boot: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def ratio(self, sums: np.ndarray, counts: np.ndarray) -> Interval:
        return bootstrap_ratio_ci(
            sums, counts, n_boot=self.n_boot, confidence=self.confidence, seed=self.seed
        )

    def diff(self, sa: np.ndarray, ca: np.ndarray, sb: np.ndarray, cb: np.ndarray) -> Interval:
        return bootstrap_ratio_diff_ci(
            sa, ca, sb, cb, n_boot=self.n_boot, confidence=self.confidence, seed=self.seed
        )


class CoverageSums:
    """Per (ranking, seed, group): summed per-instance coverage, pooled pixels, instance count, and per
    document the instances' summed AUC."""

    def __init__(self, ks: np.ndarray) -> None:
        self.ks = np.asarray(ks, dtype=float)
        n_k = len(self.ks)
        self.cov = defaultdict(lambda: np.zeros(n_k))
        self.px = defaultdict(lambda: np.zeros(n_k))
        self.total = defaultdict(float)
        self.count = defaultdict(int)
        self.expected = defaultdict(lambda: np.zeros(n_k))
        self.docs = defaultdict(int)
        self.doc_auc: dict[tuple, dict[int, float]] = defaultdict(dict)
        self.doc_count: dict[tuple, dict[int, int]] = defaultdict(dict)

    def add(self, key, covered: np.ndarray, totals: np.ndarray, share: np.ndarray, doc: int) -> None:
        """covered [I, K] pixels, totals [I] pixels, share [K] budget / tokens, of document `doc`."""
        per_instance = covered / totals[:, None]
        self.cov[key] += per_instance.sum(0)
        self.px[key] += covered.sum(0)
        self.total[key] += float(totals.sum())
        self.count[key] += len(totals)
        self.expected[key] += share * len(totals)
        self.docs[key] += 1  # called once per document and key
        self.doc_auc[key][doc] = float(auc_from_zero(self.ks, per_instance).sum())
        self.doc_count[key][doc] = len(totals)

    def per_document(self, key, docs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(summed AUC, instances) of `key` per document of `docs` (0 where the document lacks the key)."""
        auc, count = self.doc_auc.get(key, {}), self.doc_count.get(key, {})
        return (
            np.array([auc.get(d, 0.0) for d in docs]),
            np.array([count.get(d, 0) for d in docs], dtype=np.float64),
        )

    def random_per_document(self, group: str, seeds: int, docs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The random baseline's per-document summed AUC averaged over its seeds, and the instances."""
        parts = [self.per_document(("random", s, group), docs) for s in range(seeds)]
        return np.mean([p[0] for p in parts], 0), parts[0][1]


def auc_from_zero(ks: np.ndarray, cov: np.ndarray) -> np.ndarray | float:
    """Area under coverage vs K/100 with (0, 0) prepended (random tokens: ≈ 0.5 on a grid up to 100 %);
    `cov` [..., K] gives one area per row."""
    cov = np.asarray(cov, dtype=float)
    zero = np.zeros((*cov.shape[:-1], 1))
    area = np.trapezoid(np.concatenate([zero, cov], -1), np.concatenate([[0.0], ks / 100]), axis=-1)
    return float(area) if np.ndim(area) == 0 else area


def _documents(sums: CoverageSums) -> list[int]:
    return sorted({d for per in sums.doc_auc.values() for d in per})


def coverage_tables(
    sums: CoverageSums, ks: np.ndarray, model: str, seeds: int, bootstrap: Bootstrap | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(curves, auc, contrasts) tables of one model; the random baseline as mean and std over its seeds,
    every AUC with its CI (documents resampled) and each ranking's gain over random tokens with a paired CI."""
    boot = bootstrap or Bootstrap()
    curve_rows, auc_rows = [], []
    groups = sorted({k[2] for k in sums.count})
    rankings = list(dict.fromkeys(k[0] for k in sums.count if k[0] != "random"))
    docs = _documents(sums)
    for g in groups:
        rand = [sums.cov[("random", s, g)] / sums.count[("random", s, g)] for s in range(seeds)]
        rand_px = [sums.px[("random", s, g)] / sums.total[("random", s, g)] for s in range(seeds)]
        rand_auc = [auc_from_zero(ks, c) for c in rand]
        rand_doc, n_doc = sums.random_per_document(g, seeds, docs)
        rand_ci = boot.ratio(rand_doc, n_doc)
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
            own_doc, _ = sums.per_document(key, docs)
            ci = boot.ratio(own_doc, n_doc)
            gain = boot.ratio(own_doc - rand_doc, n_doc)
            auc_rows.append(
                {
                    **base,
                    "ranking": r,
                    "auc": auc_from_zero(ks, cov),
                    "auc_ci_low": ci.low,
                    "auc_ci_high": ci.high,
                    "auc_std": np.nan,
                    "random_auc": np.mean(rand_auc),
                    "gain_ci_low": gain.low,
                    "gain_ci_high": gain.high,
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
                "auc_ci_low": rand_ci.low,
                "auc_ci_high": rand_ci.high,
                "auc_std": float(np.std(rand_auc, ddof=ddof)),
                "random_auc": float(np.mean(rand_auc)),
                "gain_ci_low": 0.0,
                "gain_ci_high": 0.0,
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
    auc = auc[AUC_COLUMNS]
    return curves, auc, _contrasts(sums, model, [*rankings, "random"], seeds, docs, boot)


AUC_COLUMNS = [
    "model",
    "ranking",
    "group",
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "auc_std",
    "random_auc",
    "auc_gain",
    "gain_ci_low",
    "gain_ci_high",
    "instances",
    "documents",
]
"""Columns of the AUC table: auc_std is the random baseline's spread over its seeds; the CIs resample
documents (auc_gain's is paired with the random tokens of the same documents)."""
CONTRAST_COLUMNS = ["model", "ranking", "contrast", "difference", "ci_low", "ci_high", "documents"]


def _contrasts(
    sums: CoverageSums, model: str, rankings: list[str], seeds: int, docs: list[int], boot: Bootstrap
) -> pd.DataFrame:
    """Per ranking: AUC of group a − AUC of group b (`CONTRASTS`), paired by document, with its CI."""
    rows = []
    for a, b in CONTRASTS:
        for r in rankings:
            if r == "random":
                (sa, ca), (sb, cb) = (sums.random_per_document(g, seeds, docs) for g in (a, b))
            else:
                (sa, ca), (sb, cb) = (sums.per_document((r, -1, g), docs) for g in (a, b))
            if ca.sum() == 0 or cb.sum() == 0:
                continue
            ci = boot.diff(sa, ca, sb, cb)
            rows.append(
                {
                    "model": model,
                    "ranking": r,
                    "contrast": f"{a} − {b}",
                    "difference": ci.estimate,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "documents": int(((ca > 0) | (cb > 0)).sum()),
                }
            )
    return pd.DataFrame(rows, columns=CONTRAST_COLUMNS)
