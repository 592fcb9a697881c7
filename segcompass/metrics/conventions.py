"""Referring/reasoning-segmentation metrics under two switchable conventions (docs/design.md §5).

Per sample (one sentence), with pixels flagged "ignore" removed from both I and U:

- ``lisa`` (LISA): IoU = I / U, and 1 when U = 0 (empty prediction on an empty GT).
- ``rela`` (gRefCOCO / ReLA): a *no-target* sample (the data's flag, else an empty GT) scores IoU 1 when the
  prediction is empty (TP) and IoU 0 otherwise, its predicted area going into ΣU (FN); a target sample
  with an empty prediction has I = 0 (FP), otherwise I / U (TN).

Summary (both conventions): gIoU = Σ IoU / N_all; cIoU = Σ I / Σ U; N-acc = TP / (TP + FN); T-acc =
TN / (TN + FP); Pr@t = share of target (non-empty GT) samples with IoU ≥ t. The TP/FN/TN/FP outcome of a
sample depends only on (no-target, prediction empty), so it is the same in both conventions; they differ
only in I, U and IoU of the empty cases: LISA decides by U = 0 once ignore pixels are removed, ReLA by the
no-target flag and the emptiness of the prediction. "Prediction empty" is judged over all pixels (no
confident slot, or only empty masks). A prediction's mask is the union of the confident slots' masks
(:func:`prediction_mask`). Numbers not defined for a run (no no-target samples → N-acc) are None.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from segcompass.metrics.summary import CONVENTIONS, Convention, MetricSummary, Protocol, summarise

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def prediction_mask(
    slot_masks: ArrayLike, confidence: ArrayLike, threshold: float = 0.5, mask_threshold: float = 0.5
) -> np.ndarray:
    """Union of the masks of the confident slots.

    Args:
        slot_masks: [K, H, W] bool masks or probabilities (binarised at ``mask_threshold``).
        confidence: [K] confidence probabilities (sigmoid of the logits); slots with ≥ ``threshold`` count.
    Returns:
        [H, W] bool (all False when no slot is confident).
    """
    m, c = _np(slot_masks), _np(confidence).reshape(-1)
    if m.ndim != 3 or m.shape[0] != c.shape[0]:
        raise ValueError(f"slot masks [K, H, W] and confidences [K] disagree: {m.shape} vs {c.shape}")
    binary = m.astype(bool) if m.dtype == bool else m >= mask_threshold
    return binary[c >= threshold].any(axis=0) if binary.shape[0] else np.zeros(m.shape[1:], dtype=bool)


def gt_union(gt: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
    """[H, W] bool union of GT given as [H, W], [N, H, W] or a list of [H, W] instance masks."""
    if isinstance(gt, list | tuple):
        if not gt:
            raise ValueError("an empty list of GT masks has no size; pass np.zeros((H, W), bool)")
        gt = np.stack([_np(g) for g in gt])
    a = _np(gt).astype(bool)
    if a.ndim == 3:
        return a.any(axis=0)
    if a.ndim != 2:
        raise ValueError(f"GT must be [H, W] or [N, H, W], got shape {a.shape}")
    return a


def split_label_map(label: ArrayLike, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """(target, ignore) bool masks of a LISA-style label map (1 = target, ``ignore_index`` = ignore)."""
    lab = _np(label)
    return (lab == 1), (lab == ignore_index)


@dataclass
class SampleScore:
    """Score of one sample (one sentence)."""

    sample_id: str
    """Identifier of the sample."""
    intersection: int
    """I added to Σ I."""
    union: int
    """U added to Σ U."""
    iou: float
    """Per-sample IoU under the convention."""
    gt_area: int
    """GT pixels outside the ignore region."""
    pred_area: int
    """Predicted pixels outside the ignore region."""
    ignored: int
    """Pixels excluded as ignore."""
    no_target: bool
    """The sample has no target (data flag, else empty GT)."""
    pred_empty: bool
    """The prediction has no pixel."""
    outcome: str
    """TP (no-target, empty prediction), FN (no-target, non-empty), TN (target, non-empty), FP (target,
    empty)."""


def score_sample(
    sample_id: str,
    pred: ArrayLike,
    gt: ArrayLike | Sequence[ArrayLike],
    ignore: ArrayLike | None = None,
    no_target: bool | None = None,
    convention: Convention = "lisa",
) -> SampleScore:
    """Score one sample (shapes [H, W]; ``gt`` may hold instances [N, H, W])."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r} (expected one of {CONVENTIONS})")
    p, g = _np(pred).astype(bool), gt_union(gt)
    if p.shape != g.shape:
        raise ValueError(f"{sample_id}: prediction {p.shape} and GT {g.shape} differ in size")
    keep = np.ones_like(g) if ignore is None else ~_np(ignore).astype(bool)
    if keep.shape != g.shape:
        raise ValueError(f"{sample_id}: ignore mask {keep.shape} and GT {g.shape} differ in size")
    pk, gk = p & keep, g & keep
    inter, union = int((pk & gk).sum()), int((pk | gk).sum())
    pred_empty = not p.any()
    if no_target is None:
        no_target = not g.any()
    elif no_target and g.any():
        logger.warning("%s: flagged no-target but its GT mask is not empty; using the flag", sample_id)
    outcome = ("TP" if pred_empty else "FN") if no_target else ("FP" if pred_empty else "TN")
    if convention == "lisa":
        iou = inter / union if union else 1.0
    elif no_target:
        iou, inter, union = (1.0, 0, 0) if pred_empty else (0.0, 0, int(pk.sum()))
    else:
        if pred_empty:
            inter = 0
        iou = inter / union if union else 0.0
    return SampleScore(
        sample_id, inter, union, float(iou), int(gk.sum()), int(pk.sum()), int((~keep).sum()), bool(no_target),
        pred_empty, outcome,
    )  # fmt: skip


@dataclass
class MetricsConfig:
    """Settings of an evaluation."""

    convention: Convention = "lisa"
    """``lisa`` or ``rela`` (see the module docstring)."""
    confidence_threshold: float = 0.5
    """Slot confidence (probability) threshold for :meth:`MetricAccumulator.add_slots`."""
    mask_threshold: float = 0.5
    """Binarisation of probability masks."""
    pr_thresholds: tuple[float, ...] = (0.7, 0.8, 0.9)
    """IoU thresholds of Pr@."""


class MetricAccumulator:
    """Collects per-sample scores; gives the per-sample table and the summary."""

    def __init__(self, config: MetricsConfig | None = None) -> None:
        self.config = config or MetricsConfig()
        if self.config.convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {self.config.convention!r} (expected one of {CONVENTIONS})")
        self._rows: list[dict[str, Any]] = []

    def add(
        self,
        sample_id: str,
        pred: ArrayLike,
        gt: ArrayLike | Sequence[ArrayLike],
        ignore: ArrayLike | None = None,
        no_target: bool | None = None,
        **extra: Any,
    ) -> SampleScore:
        """Score a predicted mask [H, W]; ``extra`` (text, split, …) becomes extra columns."""
        s = score_sample(sample_id, pred, gt, ignore, no_target, self.config.convention)
        self._rows.append({**asdict(s), **extra})
        return s

    def add_slots(
        self,
        sample_id: str,
        slot_masks: ArrayLike,
        confidence: ArrayLike,
        gt: ArrayLike | Sequence[ArrayLike],
        ignore: ArrayLike | None = None,
        no_target: bool | None = None,
        **extra: Any,
    ) -> SampleScore:
        """Score the union of the confident slots (``slot_masks`` [K, H, W], ``confidence`` [K] probs)."""
        c = self.config
        pred = prediction_mask(slot_masks, confidence, c.confidence_threshold, c.mask_threshold)
        n_conf = int((_np(confidence).reshape(-1) >= c.confidence_threshold).sum())
        return self.add(sample_id, pred, gt, ignore, no_target, confident_slots=n_conf, **extra)

    def __len__(self) -> int:
        return len(self._rows)

    def per_sample(self) -> pd.DataFrame:
        """One row per sample: the :class:`SampleScore` fields, the convention and any extra columns."""
        df = pd.DataFrame(self._rows, columns=None if self._rows else list(SampleScore.__dataclass_fields__))
        df.insert(1, "convention", self.config.convention)
        return df

    def summary(
        self, dataset: str = "", split: str = "", decoding: str = "greedy", **extra: Any
    ) -> MetricSummary:
        """Summary with its protocol (``extra``: checkpoint, seed, hashes, …)."""
        c = self.config
        protocol = Protocol(
            convention=c.convention, dataset=dataset, split=split, decoding=decoding,
            confidence_threshold=c.confidence_threshold, pr_thresholds=tuple(c.pr_thresholds), extra=dict(extra),
        )  # fmt: skip
        return summarise(self.per_sample(), protocol)
