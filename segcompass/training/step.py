"""One joint training step (docs/design.md §4), every phase timed:

    rollout     one batched, KV-cached generate: G sampled responses per prompt (no grad)
    reference   one no-grad forward of the frozen reference policy → ref log-probs (skipped when β = 0)
    forward     one policy forward over prompt + response (log-probs, hook states, e_k) + the head
    reward      format + segmentation rewards of every response (from the detached head output)
    backward    pg + β·KL + 0.3·L_seg + 0.2·L_conf → one backward, clip, optimiser step

On-policy with one update per batch, the sampling policy is the current one, so old log-probs are the
forward's own (detached): the ratio is 1 in value and its gradient is the policy gradient.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from segcompass.grpo import group_advantages, joint_loss, policy_loss
from segcompass.model import ModelOutput, SegCompassModel
from segcompass.policy import Rollouts, generate_rollouts, reference_logprobs
from segcompass.rewards import RewardFn, RewardResult, compute_reward

from .batches import TrainSample
from .config import JointTrainConfig
from .sharding import full_grad_norm


@dataclass
class StepResult:
    """What one step did (N = prompts × G responses on this process)."""

    loss: float
    """Total loss."""
    metrics: dict[str, float]
    """Scalars for logging: loss parts, rewards and their parts, CoT length, clip fractions, grad norm."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: rollout, reference, forward, reward, backward (+ total)."""
    texts: list[str] = field(default_factory=list)
    """The N responses."""


@contextmanager
def _timer(timings: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def score_responses(
    rollouts: Rollouts,
    out: ModelOutput,
    targets: list[Tensor],
    cfg: JointTrainConfig,
    reward_fn: RewardFn | None = None,
    *,
    expected_tokens: int | None = None,
) -> list[RewardResult | float]:
    """Reward of every response from its text and the head's detached masks and confidences
    (`reward_fn` replaces `compute_reward` with `cfg.reward`: plug in your own reward here; it may return
    a `RewardResult` or a plain float). `expected_tokens`: the concentration tokens the format demands, the
    model's `policy.head_slots` (default: `cfg.policy`'s, which `train_joint` checks against the model's)."""
    k = cfg.policy.head_slots if expected_tokens is None else expected_tokens
    head = out.head
    probs = torch.sigmoid(head.slot_masks.detach().float())  # [N, K, S, S]
    conf = head.slot_confidence.detach().float()  # [N, K]
    if reward_fn is None:
        return [
            compute_reward(text, probs[i], conf[i], targets[i], cfg.reward, expected_tokens=k)
            for i, text in enumerate(rollouts.texts)
        ]
    return [reward_fn(text, probs[i], conf[i], targets[i]) for i, text in enumerate(rollouts.texts)]


def joint_step(
    model: SegCompassModel,
    forward_module: nn.Module,
    reference: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    batch: list[TrainSample],
    cfg: JointTrainConfig,
    step: int,
    trainable: list[nn.Parameter],
    reward_fn: RewardFn | None = None,
) -> StepResult:
    """Run one step on this process's `batch` of prompts; `forward_module` is `model` or its DDP wrapper."""
    t: dict[str, float] = {}
    g = cfg.group_size
    start = time.perf_counter()
    with _timer(t, "rollout"):
        rollouts = generate_rollouts(
            model.backbone, [s.image for s in batch], [s.text for s in batch], cfg.policy, group_size=g,
            synced_gpus=cfg.parallel == "fsdp" and torch.distributed.is_initialized(),
        )  # fmt: skip
    ref_logp = None
    if cfg.uses_policy_gradient and cfg.loss.beta > 0 and reference is not None:
        with _timer(t, "reference"):
            ref_logp = reference_logprobs(reference, rollouts)  # [N, R]
    targets = [s.targets for s in batch for _ in range(g)]
    embeddings = torch.stack([s.embedding for s in batch]).repeat_interleave(g, dim=0)  # [N, 256, g, g]
    with _timer(t, "forward"):
        out = forward_module(rollouts, embeddings, targets if cfg.trains_head else None, step,
                             cfg.head_loss_llm_grad, cfg.head_loss_responses)  # fmt: skip
    with _timer(t, "reward"):
        rewards = score_responses(
            rollouts, out, targets, cfg, reward_fn, expected_tokens=model.policy.head_slots
        )
        r = torch.tensor([x.total if isinstance(x, RewardResult) else float(x) for x in rewards])
        parts = [x for x in rewards if isinstance(x, RewardResult)]
        adv = group_advantages(r, g, std=cfg.advantage_std).advantages if g > 1 else torch.zeros_like(r)
        adv = adv.to(out.states.logp.device)
    with _timer(t, "backward"):
        states = out.states
        zero = states.logp.new_zeros(())
        if cfg.uses_policy_gradient:
            pol = policy_loss(
                states.logp, states.logp.detach(), ref_logp, adv, states.response_mask, cfg.loss
            )
            pg, kl = pol.pg, pol.kl
        else:
            pol, pg, kl = None, zero, zero
        losses = out.head.losses
        seg = losses.seg if (cfg.trains_head and losses is not None) else zero
        conf = losses.conf if (cfg.trains_head and losses is not None) else zero
        total = joint_loss(pg, kl, seg, conf, cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        total.total.backward()
        grad_norm = full_grad_norm(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(
                f"non-finite gradient norm at step {step}; loss parts {total.log_dict()}"
            )
        optimizer.step()
    t["total"] = time.perf_counter() - start
    metrics = total.log_dict()
    metrics.update(
        {
            "reward/total": float(r.mean()),
            "reward/format": sum(x.format.reward for x in parts) / max(1, len(parts)),
            "reward/seg": sum(x.seg.reward for x in parts) / max(1, len(parts)),
            "reward/group_std": float(r.reshape(-1, g).std(dim=1).mean()) if g > 1 else 0.0,
            "policy/cot_tokens": float(rollouts.cot_lengths().float().mean()),
            "policy/response_tokens": float(rollouts.response_mask.sum(1).float().mean()),
            "policy/concentration_found": float(states.concentration_found.float().mean()),
            "policy/complete": float((states.concentration_found >= model.policy.head_slots).float().mean()),
            "head/confident_slots": float(out.head.confident.sum(1).float().mean()),
            "grad_norm": float(grad_norm),
        }
    )
    if pol is not None:
        metrics.update(
            {"policy/clip_low": float(pol.clip_frac_low), "policy/clip_high": float(pol.clip_frac_high)}
        )
    return StepResult(float(total.total.detach()), metrics, t, rollouts.texts)
