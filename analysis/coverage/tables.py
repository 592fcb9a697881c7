"""Aggregation of instance coverage: per-(ranking, seed, group) sums → curves, AUC and contrast tables.

Only sums over K are kept while documents stream, plus one number per document and key (its instances'
summed AUC), so memory grows with documents, never with tokens. The AUC of the mean curve equals the mean
of the instances' AUCs (the trapezoid rule is linear), so its CI resamples documents (a cluster bootstrap).
"""

from __future__ import annotations

from array import array
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
    """Per (ranking, seed, group): summed per-instance coverage, pooled pixels, instance count; and per
    (ranking, group) and document the instances' summed AUC (the random seeds' sum in one entry), in flat
    arrays (a few bytes per document and key)."""

    def __init__(self, ks: np.ndarray) -> None:
        self.ks = np.asarray(ks, dtype=float)
        n_k = len(self.ks)
        self.cov = defaultdict(lambda: np.zeros(n_k))
        self.px = defaultdict(lambda: np.zeros(n_k))
        self.total = defaultdict(float)
        self.count = defaultdict(int)
        self.expected = defaultdict(lambda: np.zeros(n_k))
        self.docs = defaultdict(int)
        self._doc_ids: dict[tuple[str, str], array] = defaultdict(lambda: array("q"))
        self._doc_auc: dict[tuple[str, str], array] = defaultdict(lambda: array("d"))
        self._doc_count: dict[tuple[str, str], array] = defaultdict(lambda: array("d"))

    def add(self, key, covered: np.ndarray, totals: np.ndarray, share: np.ndarray, doc: int) -> None:
        """covered [I, K] pixels, totals [I] pixels, share [K] budget / tokens, of document `doc`; called once
        per document and key, the random seeds of a document one after the other."""
        per_instance = covered / totals[:, None]
        self.cov[key] += per_instance.sum(0)
        self.px[key] += covered.sum(0)
        self.total[key] += float(totals.sum())
        self.count[key] += len(totals)
        self.expected[key] += share * len(totals)
        self.docs[key] += 1
        ranking, seed, group = key
        auc = float(auc_from_zero(self.ks, per_instance).sum())
        ids = self._doc_ids[(ranking, group)]
        if ranking == "random" and seed > 0 and ids and ids[-1] == doc:
            self._doc_auc[(ranking, group)][-1] += auc  # the document's entry of seed 0
        else:
            ids.append(doc)
            self._doc_auc[(ranking, group)].append(auc)
            self._doc_count[(ranking, group)].append(len(totals))

    def documents(self) -> np.ndarray:
        """Every document with an entry, sorted."""
        return np.unique(np.concatenate([np.frombuffer(a, dtype=np.int64) for a in self._doc_ids.values()]))

    def per_document(
        self, ranking: str, group: str, docs: np.ndarray, seeds: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """(summed AUC — for "random" averaged over its `seeds` —, instances) per document of `docs`
        (0 where the document lacks the group)."""
        auc, count = np.zeros(len(docs)), np.zeros(len(docs))
        if (ranking, group) in self._doc_ids:
            pos = np.searchsorted(docs, np.frombuffer(self._doc_ids[(ranking, group)], dtype=np.int64))
            auc[pos] = np.frombuffer(self._doc_auc[(ranking, group)], dtype=np.float64)
            count[pos] = np.frombuffer(self._doc_count[(ranking, group)], dtype=np.float64)
        return (auc / seeds if ranking == "random" else auc), count


def auc_from_zero(ks: np.ndarray, cov: np.ndarray) -> np.ndarray | float:
    """Area under coverage vs K/100 with (0, 0) prepended (random tokens: ≈ 0.5 on a grid up to 100 %);
    `cov` [..., K] gives one area per row."""
    cov = np.asarray(cov, dtype=float)
    zero = np.zeros((*cov.shape[:-1], 1))
    area = np.trapezoid(np.concatenate([zero, cov], -1), np.concatenate([[0.0], ks / 100]), axis=-1)
    return float(area) if np.ndim(area) == 0 else area


def coverage_tables(
    sums: CoverageSums, ks: np.ndarray, model: str, seeds: int, bootstrap: Bootstrap | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(curves, auc, contrasts) tables of one model; the random baseline as mean and std over its seeds,
    every AUC with its CI (documents resampled) and each ranking's gain over random tokens with a paired CI."""
    boot = bootstrap or Bootstrap()
    curve_rows, auc_rows = [], []
    groups = sorted({k[2] for k in sums.count})
    rankings = list(dict.fromkeys(k[0] for k in sums.count if k[0] != "random"))
    docs = sums.documents()
    for g in groups:
        rand = [sums.cov[("random", s, g)] / sums.count[("random", s, g)] for s in range(seeds)]
        rand_px = [sums.px[("random", s, g)] / sums.total[("random", s, g)] for s in range(seeds)]
        rand_auc = [auc_from_zero(ks, c) for c in rand]
        rand_doc, n_doc = sums.per_document("random", g, docs, seeds)
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
            own_doc, _ = sums.per_document(r, g, docs)
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
    sums: CoverageSums, model: str, rankings: list[str], seeds: int, docs: np.ndarray, boot: Bootstrap
) -> pd.DataFrame:
    """Per ranking: AUC of group a − AUC of group b (`CONTRASTS`), paired by document, with its CI."""
    rows = []
    for a, b in CONTRASTS:
        for r in rankings:
            (sa, ca), (sb, cb) = (sums.per_document(r, g, docs, seeds) for g in (a, b))
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
