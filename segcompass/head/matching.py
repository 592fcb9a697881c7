"""Hungarian matching of slots to GT instances on soft IoU (scipy `linear_sum_assignment`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


@dataclass
class Match:
    """Matching of one sample."""

    slot_idx: Tensor
    """[M] long: matched slots (ascending)."""
    target_idx: Tensor
    """[M] long: the GT instance matched to each slot."""
    iou: Tensor
    """[M] soft IoU of each matched pair (detached)."""


def soft_iou_matrix(probs: Tensor, targets: Tensor, eps: float = 1e-6) -> Tensor:
    """Soft IoU between every prediction and every target.

    Args:
        probs: [K, H, W] probabilities in [0, 1].
        targets: [N, H, W] in [0, 1].
    Returns:
        [K, N] with IoU = Σpg / (Σp + Σg − Σpg + eps).
    """
    p = probs.flatten(1).float()  # [K, HW]
    g = targets.flatten(1).float()  # [N, HW]
    inter = p @ g.t()  # [K, N]
    union = p.sum(1, keepdim=True) + g.sum(1).unsqueeze(0) - inter
    return inter / (union + eps)


def hungarian(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost assignment of a [K, N] cost matrix → (rows ascending, cols), min(K, N) pairs."""
    if cost.numel() == 0:
        e = torch.empty(0, dtype=torch.long)
        return e, e.clone()
    r, c = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.as_tensor(r, dtype=torch.long), torch.as_tensor(c, dtype=torch.long)


def match_slots(
    mask_logits: Tensor,
    targets: Tensor,
    confidence_logits: Tensor | None = None,
    iou_weight: float = 1.0,
    conf_weight: float = 0.0,
) -> Match:
    """Match the K slots of one sample to its N GT instances.

    cost[k, n] = iou_weight · (1 − softIoU(sigmoid(mask_k), gt_n)) − conf_weight · sigmoid(conf_k).

    Args:
        mask_logits: [K, H, W] slot mask logits.
        targets: [N, H, W] GT masks (N may be 0).
        confidence_logits: [K], needed only when conf_weight ≠ 0.
    """
    dev = mask_logits.device
    k, n = mask_logits.shape[0], targets.shape[0]
    if n == 0:
        e = torch.empty(0, dtype=torch.long, device=dev)
        return Match(e, e.clone(), torch.empty(0, device=dev))
    with torch.no_grad():
        iou = soft_iou_matrix(torch.sigmoid(mask_logits), targets.to(dev))  # [K, N]
        cost = iou_weight * (1.0 - iou)
        if conf_weight:
            if confidence_logits is None:
                raise ValueError("match_slots: conf_weight ≠ 0 needs confidence_logits")
            cost = cost - conf_weight * torch.sigmoid(confidence_logits.float()).view(k, 1)
    rows, cols = hungarian(cost)
    rows, cols = rows.to(dev), cols.to(dev)
    return Match(rows, cols, iou[rows, cols])
