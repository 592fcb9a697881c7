"""GRPO math (docs/design.md §4): group-normalised advantages, clipped policy loss, k3 KL, the joint loss.

No training loop lives here; every function is pure and tested against hand-computed values::

    adv = group_advantages(rewards, group_size=8).advantages            # [B·G]
    pol = policy_loss(logp, old_logp, ref_logp, adv, response_mask)      # pg + KL parts
    loss = joint_loss(pol.pg, pol.kl, l_seg, l_conf)                     # pg + 0.2·KL + 0.3·seg + 0.2·conf
    loss.total.backward()
"""

from segcompass.grpo.advantages import GroupAdvantages, group_advantages
from segcompass.grpo.losses import (
    GRPOLossConfig,
    JointLoss,
    PolicyLoss,
    clipped_surrogate,
    joint_loss,
    k3_kl,
    masked_mean,
    policy_loss,
)

__all__ = [
    "GRPOLossConfig",
    "GroupAdvantages",
    "JointLoss",
    "PolicyLoss",
    "clipped_surrogate",
    "group_advantages",
    "joint_loss",
    "k3_kl",
    "masked_mean",
    "policy_loss",
]
