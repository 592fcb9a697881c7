"""Segmentation and confidence losses of the head (docs/design.md §4).

L_seg  = BCE(heatmap) + c_d·Dice(mask) + c_f·Focal(mask) + c_d·Dice(heatmap), over matched (slot, GT) pairs,
         each term a per-pair mean over pixels, averaged over all matched pairs of the batch;
L_conf = BCE(confidence logits, 1 for matched slots else 0), mean over all B·K slots;
total  = seg_weight·L_seg + conf_weight·L_conf.
A sample without targets contributes only to L_conf (all-zero targets).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LossConfig, TooManyTargets
from .matching import Match

logger = logging.getLogger(__name__)


class TooManyTargetsError(ValueError):
    """A sample has more GT instances than the head has slots."""


def prepare_targets(
    targets: Sequence[Tensor], num_slots: int, policy: TooManyTargets = "error"
) -> tuple[list[Tensor], list[int]]:
    """Apply the more-targets-than-slots policy.

    Returns:
        (targets with at most `num_slots` instances each, number of instances dropped per sample).
    Raises:
        TooManyTargetsError: under policy 'error' when a sample has more than `num_slots` instances.
    """
    out, dropped = [], []
    for i, t in enumerate(targets):
        if t.ndim != 3:
            raise ValueError(f"targets[{i}] must be [N, H, W], got shape {tuple(t.shape)}")
        n = t.shape[0]
        if n > num_slots:
            if policy == "error":
                raise TooManyTargetsError(
                    f"sample {i} has {n} target instances but the head has only {num_slots} slots; "
                    "raise num_slots, filter the data, or set loss.too_many_targets='drop'"
                )
            if policy != "drop":
                raise ValueError(f"unknown too_many_targets policy {policy!r} (expected 'error' or 'drop')")
            logger.debug("sample %d: dropping %d of %d targets (K=%d)", i, n - num_slots, n, num_slots)
            t = t[:num_slots]
        dropped.append(max(0, n - num_slots))
        out.append(t)
    return out, dropped


def bce_per_pair(logits: Tensor, target: Tensor) -> Tensor:
    """Pixel-mean binary cross-entropy with logits: [M, H, W] → [M]."""
    return (
        F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        .flatten(1)
        .mean(1)
    )


def dice_per_pair(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 − (2Σpg + s) / (Σp + Σg + s) with p = sigmoid(logits): [M, H, W] → [M]."""
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    return 1.0 - (2.0 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)


def focal_per_pair(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Pixel-mean sigmoid focal loss (RetinaNet form): [M, H, W] → [M]."""
    x, g = logits.float(), target.float()
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, g, reduction="none")
    p_t = p * g + (1 - p) * (1 - g)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * g + (1 - alpha) * (1 - g)) * loss
    return loss.flatten(1).mean(1)


@dataclass
class HeadLosses:
    """Named loss components (scalars; the tensors carry gradients)."""

    total: Tensor
    """seg_weight·seg + conf_weight·conf."""
    seg: Tensor
    """L_seg."""
    conf: Tensor
    """L_conf."""
    heatmap_bce: Tensor
    """Mean over matched pairs of the heatmap BCE."""
    mask_dice: Tensor
    """Mean over matched pairs of the mask Dice loss."""
    mask_focal: Tensor
    """Mean over matched pairs of the mask focal loss."""
    heatmap_dice: Tensor
    """Mean over matched pairs of the heatmap Dice loss."""
    dice_coef: float
    """c_d used."""
    focal_coef: float
    """c_f used."""
    num_matched: int
    """Matched pairs in the batch."""
    dropped_targets: list[int]
    """GT instances dropped per sample by the 'drop' policy."""

    def as_dict(self) -> dict[str, float]:
        """Plain floats, for logging."""
        names = ("total", "seg", "conf", "heatmap_bce", "mask_dice", "mask_focal", "heatmap_dice")
        d = {n: float(getattr(self, n).detach()) for n in names}
        d.update(dice_coef=self.dice_coef, focal_coef=self.focal_coef, num_matched=float(self.num_matched))
        d["dropped_targets"] = float(sum(self.dropped_targets))
        return d


def head_losses(
    heatmap_logits: Tensor,
    mask_logits: Tensor,
    confidence_logits: Tensor,
    targets: Sequence[Tensor],
    matches: Sequence[Match],
    cfg: LossConfig,
    step: int = 0,
    dropped_targets: Sequence[int] | None = None,
) -> HeadLosses:
    """Losses of a batch given its matching.

    Args:
        heatmap_logits, mask_logits: [B, K, S, S].
        confidence_logits: [B, K].
        targets: B tensors [N_b, S, S] (already limited to K instances).
        matches: B `Match` records.
        step: optimisation step (selects c_d, c_f).
    """
    b, k = confidence_logits.shape
    c_d, c_f = cfg.coefficients(step)
    sb = torch.cat([torch.full_like(m.slot_idx, i) for i, m in enumerate(matches)]) if matches else None
    conf_target = torch.zeros(b, k, device=confidence_logits.device)
    if sb is not None and sb.numel():
        sk = torch.cat([m.slot_idx for m in matches])
        conf_target[sb, sk] = 1.0
        dev = mask_logits.device  # targets may stay on the host (data loaders); the indices live on `dev`
        gt = torch.cat([targets[i].to(dev)[m.target_idx.to(dev)] for i, m in enumerate(matches)])
        heat, mask = heatmap_logits[sb, sk], mask_logits[sb, sk]  # [M, S, S]
        heat_bce = bce_per_pair(heat, gt).mean()
        mask_dice = dice_per_pair(mask, gt, cfg.dice_smooth).mean()
        mask_focal = focal_per_pair(mask, gt, cfg.focal_alpha, cfg.focal_gamma).mean()
        heat_dice = dice_per_pair(heat, gt, cfg.dice_smooth).mean()
        n_matched = int(sk.numel())
    else:  # no target anywhere: zero seg terms that stay connected to the graph
        zero = (heatmap_logits.sum() + mask_logits.sum()).float() * 0.0
        heat_bce = mask_dice = mask_focal = heat_dice = zero
        n_matched = 0
    seg = heat_bce + c_d * mask_dice + c_f * mask_focal + c_d * heat_dice
    conf = F.binary_cross_entropy_with_logits(confidence_logits.float(), conf_target)
    total = cfg.seg_weight * seg + cfg.conf_weight * conf
    return HeadLosses(
        total=total,
        seg=seg,
        conf=conf,
        heatmap_bce=heat_bce,
        mask_dice=mask_dice,
        mask_focal=mask_focal,
        heatmap_dice=heat_dice,
        dice_coef=c_d,
        focal_coef=c_f,
        num_matched=n_matched,
        dropped_targets=list(dropped_targets) if dropped_targets is not None else [0] * b,
    )
