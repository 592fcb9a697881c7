"""Segmentation rewards (docs/design.md §4).

- Multi-object (:func:`multi_object_seg_reward`): keep slots whose sigmoid confidence is ≥ 0.5; both
  empty → 1; one empty → 0; else the soft-IoU matrix (predictions × GT) zero-padded to M×M,
  M = max(#pred, #gt), Hungarian (scipy ``linear_sum_assignment``) on 1 − IoU, mean of the M matched
  values (so surplus or missing instances each count as 0).
- Single-target (:func:`single_target_seg_reward`, the reference's variant for one-target data):
  0.5·soft-IoU + 0.2·soft-Dice + 0.3·hard-IoU (at 0.5) against the union of the GT, for the best slot
  (the one with the highest combined score).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


@dataclass
class SegRewardConfig:
    """Segmentation-reward settings."""

    confidence_threshold: float = 0.5
    """Slots whose sigmoid confidence is ≥ this count as predictions (multi-object reward)."""
    eps: float = 1e-6
    """Added to soft-IoU / Dice denominators."""
    hard_threshold: float = 0.5
    """Binarisation of predicted probabilities for the hard IoU (single-target reward)."""
    single_weights: tuple[float, float, float] = (0.5, 0.2, 0.3)
    """(soft-IoU, soft-Dice, hard-IoU) weights of the single-target reward."""
    single_use_confidence: bool = False
    """Single-target reward: choose the best slot among confident slots only (0 if none); the reference
    scores every slot."""


@dataclass
class SegRewardResult:
    """A segmentation reward and how it came about."""

    reward: float
    """In [0, 1]."""
    num_pred: int
    """Slots kept as predictions."""
    num_gt: int
    """GT instances."""
    matched_iou: list[float] = field(default_factory=list)
    """Multi-object: the M matched soft IoUs (zeros for unmatched); single: [soft IoU of the best slot]."""
    best_slot: int | None = None
    """Single-target: index of the chosen slot."""


def soft_iou(probs: Tensor, targets: Tensor, eps: float = 1e-6) -> Tensor:
    """[P, N] soft IoU Σpg / (Σp + Σg − Σpg + eps) between probability maps [P, H, W] and masks [N, H, W]."""
    p, g = probs.flatten(1).double(), targets.flatten(1).double()
    inter = p @ g.t()
    return inter / (p.sum(1, keepdim=True) + g.sum(1).unsqueeze(0) - inter + eps)


def _as_gt(gt: Tensor | None, like: Tensor) -> Tensor:
    if gt is None:
        return like.new_zeros((0, *like.shape[1:]))
    if gt.ndim == 2:
        gt = gt.unsqueeze(0)
    if gt.ndim != 3 or gt.shape[1:] != like.shape[1:]:
        raise ValueError(
            f"GT masks must be [N, H, W] matching {tuple(like.shape[1:])}, got {tuple(gt.shape)}"
        )
    return gt.to(like.device).float()


def multi_object_seg_reward(
    mask_probs: Tensor, confidence: Tensor, gt_masks: Tensor | None, config: SegRewardConfig | None = None
) -> SegRewardResult:
    """Hungarian soft-IoU reward of one response.

    Args:
        mask_probs: [K, H, W] slot mask probabilities (sigmoid of the mask logits).
        confidence: [K] slot confidence probabilities (sigmoid of the confidence logits).
        gt_masks: [N, H, W] GT instance masks (N = 0 or None for a no-target sample).
    """
    cfg = config or SegRewardConfig()
    with torch.no_grad():
        gt = _as_gt(gt_masks, mask_probs)
        pred = mask_probs[confidence.reshape(-1) >= cfg.confidence_threshold].float()
        n_pred, n_gt = pred.shape[0], gt.shape[0]
        if n_pred == 0 or n_gt == 0:
            reward = 1.0 if n_pred == n_gt else 0.0
            return SegRewardResult(reward, n_pred, n_gt)
        m = max(n_pred, n_gt)
        padded = torch.zeros(m, m, dtype=torch.float64)
        padded[:n_pred, :n_gt] = soft_iou(pred, gt, cfg.eps).cpu()
        rows, cols = linear_sum_assignment((1.0 - padded).numpy())
        matched = padded[torch.as_tensor(rows), torch.as_tensor(cols)]
    return SegRewardResult(float(matched.mean()), n_pred, n_gt, [float(v) for v in matched])


def single_target_seg_reward(
    mask_probs: Tensor,
    gt_masks: Tensor | None,
    confidence: Tensor | None = None,
    config: SegRewardConfig | None = None,
) -> SegRewardResult:
    """The reference's single-target reward: w·(soft-IoU, soft-Dice, hard-IoU) of the best slot.

    Args:
        mask_probs: [K, H, W] slot mask probabilities.
        gt_masks: [N, H, W] GT instances (their union is the target) or [H, W].
        confidence: [K] probabilities; used only with ``single_use_confidence``.
    """
    cfg = config or SegRewardConfig()
    with torch.no_grad():
        gt = _as_gt(gt_masks, mask_probs)
        union = gt.amax(0, keepdim=True) if gt.shape[0] else gt.new_zeros((1, *gt.shape[1:]))
        probs = mask_probs.float().clamp(0.0, 1.0)
        slots = torch.arange(probs.shape[0], device=probs.device)
        if cfg.single_use_confidence:
            if confidence is None:
                raise ValueError("single_use_confidence needs the slot confidences")
            slots = slots[confidence.reshape(-1).to(probs.device) >= cfg.confidence_threshold]
        if slots.numel() == 0:
            return SegRewardResult(0.0, 0, int(gt.shape[0]))
        p, g = probs[slots].flatten(1).double(), union.flatten(1).double()
        inter = (p * g).sum(1)
        iou_s = inter / (p.sum(1) + g.sum(1) - inter + cfg.eps)
        dice = 2 * inter / (p.sum(1) + g.sum(1) + cfg.eps)
        hb, gb = p >= cfg.hard_threshold, g >= 0.5
        iou_h = (hb & gb).sum(1).double() / ((hb | gb).sum(1).double() + cfg.eps)
        w_iou, w_dice, w_hard = cfg.single_weights
        score = w_iou * iou_s + w_dice * dice + w_hard * iou_h
        best = int(score.argmax())
    return SegRewardResult(
        float(score[best]), int(slots.numel()), int(gt.shape[0]), [float(iou_s[best])], int(slots[best])
    )
