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


def _resample_weights(n: int, n_boot: int, seed: int, batch: int):
    """Batches of bootstrap weights [b, n] (how often each unit is drawn), `n_boot` rows in all, seeded."""
    rng = np.random.default_rng(seed)
    batch = max(1, min(batch, 4_000_000 // n))  # bounded [batch, n] weight matrix
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        yield np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(b)])


def _interval(estimate: float, values: list[np.ndarray], confidence: float) -> Interval:
    stats = np.concatenate(values)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return Interval(estimate, float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high))


def _check(confidence: float, *arrays: np.ndarray) -> None:
    if any(a.shape != arrays[0].shape or a.ndim != 1 for a in arrays):
        raise ValueError("sums and counts must be 1-D arrays of the same length")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


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
    _check(confidence, sums, counts)
    if sums.size == 0 or counts.sum() <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    estimate = float(sums.sum() / counts.sum())
    if n_boot <= 0 or sums.size == 1:
        return Interval(estimate, estimate, estimate)
    stats = []
    for weights in _resample_weights(sums.size, n_boot, seed, batch):
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append((weights @ sums) / (weights @ counts))
    return _interval(estimate, stats, confidence)


def bootstrap_ratio_diff_ci(
    sums_a: np.ndarray,
    counts_a: np.ndarray,
    sums_b: np.ndarray,
    counts_b: np.ndarray,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    batch: int = 100,
) -> Interval:
    """CI of Σ sums_a / Σ counts_a − Σ sums_b / Σ counts_b when whole units are resampled together.

    Row i of all four arrays is one unit (a document): both ratios see the same resample, so the interval
    is that of a paired difference (a unit without one of the two parts has count 0 there).
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (sums_a, counts_a, sums_b, counts_b)]
    sa, ca, sb, cb = arrays
    _check(confidence, *arrays)
    if sa.size == 0 or ca.sum() <= 0 or cb.sum() <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    estimate = float(sa.sum() / ca.sum() - sb.sum() / cb.sum())
    if n_boot <= 0 or sa.size == 1:
        return Interval(estimate, estimate, estimate)
    stats = []
    for w in _resample_weights(sa.size, n_boot, seed, batch):
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append((w @ sa) / (w @ ca) - (w @ sb) / (w @ cb))
    return _interval(estimate, stats, confidence)


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile-bootstrap CI of the mean of independent values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    return bootstrap_ratio_ci(values, np.ones_like(values), n_boot=n_boot, confidence=confidence, seed=seed)
