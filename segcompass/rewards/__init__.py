"""Rewards of the policy (docs/design.md §4): format reward, segmentation rewards and their weighted sum.

- **Format** (:func:`format_reward`): 0 unless the response holds exactly one non-empty
  ``<think>…</think>`` and exactly K concentration tokens after it (K = the policy's ``head_slots``; ``mode="single"``
  expects one, as the reference); 0.9 instead of 1 when the think block is over 2048 characters, text
  precedes ``<think>``, or more than 10 words stand between ``</think>`` and the last token (the tokens
  themselves not counted; with one token this is the reference's rule). Text after the last token is
  recorded (``words_after``) but not penalised, as in the reference code. Returns all parts for logging
  (CoT length, which rule failed) so that reasoning-skipping shows up in the logs.
- **Multi-object segmentation** (:func:`multi_object_seg_reward`): keep slots whose sigmoid confidence
  is ≥ 0.5; both empty → 1; one empty → 0; else the soft-IoU matrix (predictions × GT) zero-padded to
  M×M, M = max(#pred, #gt), Hungarian on 1 − IoU, mean of the M matched values (so surplus or missing
  instances each count as 0).
- **Single-target** (:func:`single_target_seg_reward`, the reference's variant for one-target data):
  0.5·soft-IoU + 0.2·soft-Dice + 0.3·hard-IoU (at 0.5) against the union of the GT, for the best slot
  (the slot with the highest combined score).
- :func:`compute_reward` = 0.3·format + 0.7·segmentation, weights configurable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Protocol

from torch import Tensor

from segcompass.rewards.format import FormatResult, FormatRewardConfig, format_reward
from segcompass.rewards.segmentation import (
    SegRewardConfig,
    SegRewardResult,
    multi_object_seg_reward,
    single_target_seg_reward,
    soft_iou,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FormatResult",
    "FormatRewardConfig",
    "RewardConfig",
    "RewardFn",
    "RewardResult",
    "SegRewardConfig",
    "SegRewardResult",
    "compute_reward",
    "format_reward",
    "multi_object_seg_reward",
    "single_target_seg_reward",
    "soft_iou",
]


@dataclass
class RewardConfig:
    """Total reward = format_weight·format + seg_weight·segmentation."""

    format_weight: float = 0.3
    """Weight of the format reward."""
    seg_weight: float = 0.7
    """Weight of the segmentation reward."""
    seg_mode: Literal["multi", "single"] = "multi"
    """``multi``: Hungarian multi-object reward; ``single``: the reference's single-target reward."""
    format: FormatRewardConfig = field(default_factory=FormatRewardConfig)
    """Format-reward rules."""
    seg: SegRewardConfig = field(default_factory=SegRewardConfig)
    """Segmentation-reward settings."""


@dataclass
class RewardResult:
    """Total reward of one response with its parts."""

    total: float
    """format_weight·format.reward + seg_weight·seg.reward."""
    format: FormatResult
    """Format part."""
    seg: SegRewardResult
    """Segmentation part."""

    def log_dict(self, prefix: str = "reward/") -> dict[str, float]:
        """Scalars for a metric logger: total, the two parts and the format details."""
        out = {
            f"{prefix}total": self.total,
            f"{prefix}format": self.format.reward,
            f"{prefix}seg": self.seg.reward,
        }
        for k, v in self.format.as_dict().items():
            if isinstance(v, bool | int | float) and k != "reward":
                out[f"{prefix}format_{k}"] = float(v)
        return out


def compute_reward(
    text: str,
    mask_probs: Tensor,
    confidence: Tensor,
    gt_masks: Tensor | None,
    config: RewardConfig | None = None,
    *,
    expected_tokens: int,
) -> RewardResult:
    """Format + segmentation reward of one response (shapes as in :func:`multi_object_seg_reward`) that must
    end in `expected_tokens` concentration tokens (the policy's `head_slots`)."""
    cfg = config or RewardConfig()
    fmt = format_reward(text, cfg.format, expected_tokens=expected_tokens)
    if cfg.seg_mode == "multi":
        seg = multi_object_seg_reward(mask_probs, confidence, gt_masks, cfg.seg)
    elif cfg.seg_mode == "single":
        seg = single_target_seg_reward(mask_probs, gt_masks, confidence, cfg.seg)
    else:
        raise ValueError(f"unknown seg_mode {cfg.seg_mode!r} (expected 'multi' or 'single')")
    total = cfg.format_weight * fmt.reward + cfg.seg_weight * seg.reward
    logger.debug("reward %.4f (format %.2f, seg %.4f)", total, fmt.reward, seg.reward)
    return RewardResult(total, fmt, seg)


class RewardFn(Protocol):
    """What a custom reward must look like to replace :func:`compute_reward` in training."""

    def __call__(
        self, text: str, mask_probs: Tensor, confidence: Tensor, gt_masks: Tensor | None
    ) -> RewardResult: ...
