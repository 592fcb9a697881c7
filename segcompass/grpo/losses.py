"""GRPO policy loss (clipped ratio, k3 KL to a frozen reference) and the joint objective.

Per response token t of response i, with r = exp(logp − old_logp) and advantage A_i:

    pg_t = max(−A_i·r, −A_i·clip(r, 1 − ε_low, 1 + ε_high))        (ε = 0.2 both sides by default)
    kl_t = exp(ref − logp) − (ref − logp) − 1                      (k3, "low_var_kl"; ≥ 0, unbiased)

Both are averaged over the valid response tokens of the whole batch ("token-level mean", the reference's
``token`` mode: Σ_{i,t} m·x / Σ_{i,t} m); ``seq_mean_token_mean`` averages per response first (TRL's and
the original GRPO paper's ``grpo`` aggregation). The k3 value is clamped to ``kl_clamp`` (10) as the
reference's framework does; ``None`` disables the clamp.

    total = pg + β·KL + seg_weight·L_seg + conf_weight·L_conf          (β 0.2, 0.3, 0.2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass
class GRPOLossConfig:
    """Weights and clipping of the joint objective."""

    clip_eps: float = 0.2
    """ε: the ratio is clipped to [1 − ε, 1 + ε_high]."""
    clip_eps_high: float | None = None
    """Upper ε when it differs from ``clip_eps`` (DAPO's clip-higher); None = ``clip_eps``."""
    beta: float = 0.2
    """β, weight of the KL term."""
    kl_clamp: float | None = 10.0
    """Upper clamp of the per-token k3 value (the reference's framework uses 10); None = no clamp."""
    seg_weight: float = 0.3
    """Weight of the head's segmentation loss."""
    conf_weight: float = 0.2
    """Weight of the head's confidence loss."""
    aggregation: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    """How per-token values become one number (see the module docstring)."""


def masked_mean(
    values: Tensor, mask: Tensor, aggregation: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
) -> Tensor:
    """Mean of [B, T] ``values`` over the tokens where ``mask`` is true (0 when there are none).

    ``token_mean``: Σ m·x / Σ m over the batch. ``seq_mean_token_mean``: the mean over responses (with at
    least one valid token) of each response's token mean.
    """
    m = mask.to(values.dtype)
    if aggregation == "token_mean":
        return (values * m).sum() / m.sum().clamp(min=1.0)
    if aggregation == "seq_mean_token_mean":
        counts = m.sum(dim=-1)
        per_seq = (values * m).sum(dim=-1) / counts.clamp(min=1.0)
        has = (counts > 0).to(values.dtype)
        return (per_seq * has).sum() / has.sum().clamp(min=1.0)
    raise ValueError(f"unknown aggregation {aggregation!r} (expected 'token_mean' or 'seq_mean_token_mean')")


def k3_kl(logp: Tensor, ref_logp: Tensor, clamp: float | None = 10.0) -> Tensor:
    """Per-token k3 estimator of KL(π‖π_ref): exp(ref − logp) − (ref − logp) − 1, clamped above."""
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1.0
    return kl.clamp(max=clamp) if clamp is not None else kl


@dataclass
class Surrogate:
    """Per-token clipped surrogate and its diagnostics."""

    per_token: Tensor
    """[B, T] max(−A·r, −A·clip(r))."""
    ratio: Tensor
    """[B, T] r = exp(logp − old_logp)."""
    clipped_low: Tensor
    """[B, T] bool: A < 0 and r < 1 − ε (the clipped branch is taken, no gradient)."""
    clipped_high: Tensor
    """[B, T] bool: A > 0 and r > 1 + ε_high."""


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> Surrogate:
    """PPO/GRPO clipped objective per token.

    Args:
        logp: [B, T] log-probs of the sampled tokens under the current policy (with grad).
        old_logp: [B, T] log-probs under the policy that sampled them (no grad).
        advantages: [B] per response or [B, T] per token.
    """
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + hi)
    per_token = torch.maximum(unclipped, clipped)
    return Surrogate(per_token, ratio, (adv < 0) & (ratio < 1.0 - clip_eps), (adv > 0) & (ratio > 1.0 + hi))


@dataclass
class PolicyLoss:
    """Policy part of the objective with diagnostics (all scalars)."""

    pg: Tensor
    """Aggregated clipped surrogate."""
    kl: Tensor
    """Aggregated k3 KL (0 when no reference log-probs were given)."""
    clip_frac_low: Tensor
    """Fraction of valid tokens clipped below (negative advantage)."""
    clip_frac_high: Tensor
    """Fraction of valid tokens clipped above (positive advantage)."""
    ratio_mean: Tensor
    """Mean ratio over valid tokens."""


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    config: GRPOLossConfig | None = None,
) -> PolicyLoss:
    """Clipped policy-gradient loss and k3 KL over the valid response tokens (``mask`` [B, T])."""
    cfg = config or GRPOLossConfig()
    s = clipped_surrogate(logp, old_logp, advantages, cfg.clip_eps, cfg.clip_eps_high)
    pg = masked_mean(s.per_token, mask, cfg.aggregation)
    if ref_logp is None:
        kl = pg.new_zeros(())
    else:
        kl = masked_mean(k3_kl(logp, ref_logp.detach(), cfg.kl_clamp), mask, cfg.aggregation)
    with torch.no_grad():
        low = masked_mean(s.clipped_low.float(), mask)
        high = masked_mean(s.clipped_high.float(), mask)
        ratio = masked_mean(s.ratio.detach(), mask)
    return PolicyLoss(pg, kl, low, high, ratio)


@dataclass
class JointLoss:
    """The joint objective and its named parts (unweighted; the total applies the weights)."""

    total: Tensor
    """pg + β·kl + seg_weight·seg + conf_weight·conf."""
    pg: Tensor
    """Policy-gradient term."""
    kl: Tensor
    """KL term (before β)."""
    seg: Tensor
    """Head segmentation loss (before its weight)."""
    conf: Tensor
    """Head confidence loss (before its weight)."""

    def log_dict(self, prefix: str = "loss/") -> dict[str, float]:
        """Detached floats for a metric logger."""
        return {
            f"{prefix}{k}": float(getattr(self, k).detach()) for k in ("total", "pg", "kl", "seg", "conf")
        }


def joint_loss(
    pg: Tensor,
    kl: Tensor | float,
    seg: Tensor | float,
    conf: Tensor | float,
    config: GRPOLossConfig | None = None,
) -> JointLoss:
    """Combine the four terms: pg + β·kl + seg_weight·seg + conf_weight·conf."""
    cfg = config or GRPOLossConfig()
    kl_t, seg_t, conf_t = (torch.as_tensor(x, dtype=pg.dtype, device=pg.device) for x in (kl, seg, conf))
    total = pg + cfg.beta * kl_t + cfg.seg_weight * seg_t + cfg.conf_weight * conf_t
    return JointLoss(total, pg, kl_t, seg_t, conf_t)
