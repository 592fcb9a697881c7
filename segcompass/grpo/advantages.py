"""Group-normalised advantages: A_i = (r_i − mean_g) / (std_g + eps) within each group of G responses.

Which standard deviation: the **sample** one (Bessel, divide by G − 1) by default, because that is what
``torch.std`` computes and what the reference's framework (veRL/EasyR1 ``compute_grpo_outcome_advantage``
uses ``torch.std``) and TRL's ``GRPOTrainer`` (``rewards.view(-1, G).std(dim=1)``) use. ``std="population"``
divides by G instead; ``std="none"`` only centres (Dr. GRPO). A group whose rewards are all equal gets
advantage 0 for every member (its std is 0, so the numerator is 0).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor


class GroupAdvantages(NamedTuple):
    """Advantages with the group statistics they came from."""

    advantages: Tensor
    """Same shape as the rewards given."""
    mean: Tensor
    """[B] group means."""
    std: Tensor
    """[B] group standard deviations (before adding eps; ones for ``std="none"``)."""


def group_advantages(
    rewards: Tensor,
    group_size: int | None = None,
    eps: float = 1e-6,
    std: Literal["sample", "population", "none"] = "sample",
) -> GroupAdvantages:
    """Normalise rewards within groups.

    Args:
        rewards: [B, G], or [B·G] with the G responses of a prompt contiguous (then give ``group_size``).
        group_size: G for flat rewards.
        eps: added to the std.
        std: ``sample`` (N − 1, as torch/TRL/veRL), ``population`` (N) or ``none`` (no scaling).
    """
    flat = rewards.ndim == 1
    if flat:
        if not group_size or rewards.numel() % group_size:
            raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
        grouped = rewards.reshape(-1, group_size)
    elif rewards.ndim == 2:
        grouped = rewards
    else:
        raise ValueError(f"rewards must be [B, G] or [B*G], got shape {tuple(rewards.shape)}")
    g = grouped.shape[1]
    if g < 2 and std != "none":
        raise ValueError("group-normalised advantages need at least 2 responses per group")
    grouped = grouped.float()
    mean = grouped.mean(dim=1)
    if std == "none":
        sd = torch.ones_like(mean)
        adv = grouped - mean[:, None]
    elif std in ("sample", "population"):
        sd = grouped.std(dim=1, correction=1 if std == "sample" else 0)
        adv = (grouped - mean[:, None]) / (sd[:, None] + eps)
    else:
        raise ValueError(f"unknown std {std!r} (expected 'sample', 'population' or 'none')")
    return GroupAdvantages(adv.reshape(rewards.shape) if flat else adv, mean, sd)
