"""Bootstrap confidence intervals (numpy, seeded)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap confidence interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ratio_ci(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    batch: int = 100,
) -> Interval:
    """CI of Σ sums / Σ counts when whole units (documents) are resampled with replacement.

    A document's tokens are not independent of each other, so resampling documents (a cluster bootstrap)
    gives honest intervals for a per-token mean; with `counts` all 1 it is the ordinary bootstrap of a mean.
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if sums.shape != counts.shape or sums.ndim != 1:
        raise ValueError("sums and counts must be 1-D arrays of the same length")
    if sums.size == 0 or counts.sum() <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    estimate = float(sums.sum() / counts.sum())
    if n_boot <= 0 or sums.size == 1:
        return Interval(estimate, estimate, estimate)
    rng = np.random.default_rng(seed)
    stats = []
    n = sums.size
    batch = max(1, min(batch, 4_000_000 // n))  # bounded [batch, n] weight matrix
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(b)])
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append((weights @ sums) / (weights @ counts))
    values = np.concatenate(stats)
    values = values[np.isfinite(values)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high))


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile-bootstrap CI of the mean of independent values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    return bootstrap_ratio_ci(values, np.ones_like(values), n_boot=n_boot, confidence=confidence, seed=seed)
