"""Decision thresholds chosen on held-out calibration data: `calibrate_thresholds`.

A slot's mask and its confidence are probabilities; turning them into a prediction needs two thresholds
(EvalConfig.mask_threshold, EvalConfig.confidence_threshold), 0.5 / 0.5 by default. 0.5 is the right cut for
per-pixel accuracy, not for IoU: when the policy's reasoning does not single out the referent, the head's
mask probabilities spread over the candidates (each below 0.5) and the 0.5 cut predicts nothing, which
scores IoU 0, while any candidate or their union scores more. Choosing the thresholds that maximise the
metric on data the model was not trained on — never on the split that is reported — is the standard remedy
(as detection picks its score threshold); the synthetic-world ablation does it on its ``calib`` split.

::

    cal = calibrate_thresholds(predictor, calib_set)
    result = evaluate(predictor, val_set, cal.apply(EvalConfig()))
    cal.table  # metric for every (mask_threshold, confidence_threshold) pair

The predictor runs once over the calibration data; every pair is then scored from the kept predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from tqdm import tqdm

from segcompass.data.base import RefDataset
from segcompass.evaluation.config import EvalConfig
from segcompass.evaluation.predictor import Predictor
from segcompass.evaluation.run import _score

DEFAULT_MASK_THRESHOLDS: tuple[float, ...] = (0.5, 0.4, 0.3, 0.2)
"""Mask-probability cuts tried by default (0.5 first: ties keep the default)."""
DEFAULT_CONFIDENCE_THRESHOLDS: tuple[float, ...] = (0.5, 0.4, 0.3, 0.2, 0.1, 0.05)
"""Slot-confidence cuts tried by default."""
_METRICS = ("gIoU", "cIoU")


@dataclass
class Calibration:
    """What `calibrate_thresholds` chose, and why."""

    mask_threshold: float
    """Best mask-probability cut."""
    confidence_threshold: float
    """Best slot-confidence cut."""
    metric: str
    """The metric maximised ("gIoU" or "cIoU")."""
    convention: str
    """The metric convention it was computed under ("lisa" or "rela")."""
    value: float
    """The metric at the chosen pair on the calibration data."""
    default_value: float
    """The metric at the EvalConfig's own thresholds on the same data (for comparison)."""
    num_samples: int
    """Calibration samples scored."""
    table: pd.DataFrame
    """One row per pair: mask_threshold, confidence_threshold, gIoU, cIoU, N-acc, T-acc."""

    def apply(self, config: EvalConfig) -> EvalConfig:
        """`config` with the calibrated thresholds."""
        return replace(
            config, mask_threshold=self.mask_threshold, confidence_threshold=self.confidence_threshold
        )


def calibrate_thresholds(
    predictor: Predictor,
    dataset: RefDataset,
    config: EvalConfig | None = None,
    mask_thresholds: Sequence[float] = DEFAULT_MASK_THRESHOLDS,
    confidence_thresholds: Sequence[float] = DEFAULT_CONFIDENCE_THRESHOLDS,
    metric: str = "gIoU",
    convention: str = "rela",
) -> Calibration:
    """Pick the (mask, confidence) thresholds that maximise `metric` of `predictor` on `dataset`.

    Args:
        predictor: scored as by `evaluate` (its masks should be probabilities; binary masks make the mask
            threshold moot).
        dataset: calibration data, disjoint from what you report on.
        config: batch size, limit, img_size, progress and the default thresholds (written nothing).
        mask_thresholds, confidence_thresholds: the grid, each in (0, 1]; ties go to the earlier pair.
        metric: "gIoU" or "cIoU". convention: "lisa" or "rela".
    """
    config = config or EvalConfig()
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if convention not in ("lisa", "rela"):
        raise ValueError(f"convention must be 'lisa' or 'rela', got {convention!r}")
    grid = [(float(m), float(c)) for m in mask_thresholds for c in confidence_thresholds]
    if not grid or any(not 0.0 < t <= 1.0 for pair in grid for t in pair):
        raise ValueError(f"thresholds must be a non-empty grid of values in (0, 1], got {grid}")
    n = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    if n == 0:
        raise ValueError("calibration needs at least one sample")
    kept = []
    bar = tqdm(total=n, desc=f"calibrate {predictor.name}", unit="sample", disable=not config.progress)
    for start in range(0, n, config.batch_size):
        samples = [dataset[i] for i in range(start, min(start + config.batch_size, n))]
        with torch.no_grad():
            preds = predictor.predict(samples)
        kept.extend(zip(samples, preds, strict=True))
        bar.update(len(samples))
    bar.close()
    pairs = [(config.mask_threshold, config.confidence_threshold), *grid]
    rows = []
    for m, c in pairs:
        rows.append(
            {"mask_threshold": m, "confidence_threshold": c, **_scores(kept, config, m, c, convention)}
        )
    default_row, table = rows[0], pd.DataFrame(rows[1:])
    best = table.iloc[int(table[metric].to_numpy().argmax())]  # first maximum: ties keep the earlier pair
    return Calibration(
        mask_threshold=float(best["mask_threshold"]),
        confidence_threshold=float(best["confidence_threshold"]),
        metric=metric,
        convention=convention,
        value=float(best[metric]),
        default_value=float(default_row[metric]),
        num_samples=n,
        table=table,
    )


def _scores(kept: list, config: EvalConfig, mask: float, conf: float, convention: str) -> dict[str, float]:
    from segcompass.metrics import MetricAccumulator, MetricsConfig

    cfg = replace(config, mask_threshold=mask, confidence_threshold=conf, convention=convention)
    accs = {convention: MetricAccumulator(MetricsConfig(convention, conf, mask))}  # type: ignore[arg-type]
    for sample, pred in kept:
        _score(accs, cfg, sample, pred, "calibration")
    s = accs[convention].summary(dataset="calibration", split="calibration", decoding=config.decoding)
    return {"gIoU": s.giou, "cIoU": s.ciou, "N-acc": s.n_acc, "T-acc": s.t_acc}
