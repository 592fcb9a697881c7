"""Configuration of joint training (GRPO on the policy + supervision of the head), docs/design.md §4."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from segcompass.grpo import GRPOLossConfig
from segcompass.model.lora import LoraSettings
from segcompass.policy import PolicyConfig
from segcompass.rewards import RewardConfig

Objective = Literal["joint", "rl", "seg"]


@dataclass
class JointTrainConfig:
    """One joint-training run. Defaults are docs/design.md §4's; `cpu_tiny()` is the CI-sized preset."""

    out: str = "runs/train"
    """Run folder: checkpoints, metrics.jsonl, the final model."""
    objective: Objective = "joint"
    """``joint``: pg + β·KL + 0.3·L_seg + 0.2·L_conf; ``rl``: pg + β·KL only (head frozen at init); ``seg``:
    0.3·L_seg + 0.2·L_conf only (no policy gradient; L_seg still reaches the post-hook layers through
    the concentration states) — the ablation arms."""
    steps: int = 1000
    """Optimiser steps."""
    prompts_per_step: int = 16
    """Prompts (samples) per step, across all processes."""
    group_size: int = 8
    """G: sampled responses per prompt."""
    lr: float = 1.6e-6
    """Base learning rate (the LLM's); the head's groups use `lr_multipliers`."""
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    """Overrides of `segcompass.head.LR_MULTIPLIERS` (codebook 30, heads 25, SAM prompt encoder 10, SAM
    decoder 5, llm 1)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps (then constant, as the reference)."""
    head_loss_llm_grad: float = 1.0
    """Scale of the gradient L_seg and L_conf send into the LLM through the concentration states (forward
    unchanged). 1: the paper's joint objective; 0: the head's losses train only the head and the LLM follows
    the policy gradient alone (with AdamW's per-parameter normalisation the larger of the two sets the post-hook
    blocks' update direction)."""
    head_loss_responses: Literal["all", "complete"] = "all"
    """Which sampled responses train the head: ``all`` (the paper) or only the ``complete`` ones — those that
    hold all K concentration tokens (a response cut short or without its `<REF_POS>` tokens gives the head
    zero states in their place, an input greedy decoding at evaluation rarely produces). Rewards and the
    policy gradient still use every response."""
    head_ema_decay: float = 0.0
    """> 0: keep an exponential moving average of the head's trainable weights (decay per step, starting
    from the run's initial weights, no bias correction; `segcompass.training.ema`) and end the run with the
    head at the average — the saved final model and the model in memory. The run itself trains the live
    weights; checkpoints carry both. 0: off (the paper: the head ends at its last weights)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip over all trainable parameters."""
    train_llm: bool = True
    """Train the LLM blocks after the hook layer (+ final norm / untied lm_head); False trains the head only."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters (peft) on the post-hook blocks instead of their full weights when `lora_rank` > 0; the KL
    reference is then the policy with its adapters off (no second copy of the LLM)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Multi-process engine under torchrun: ``ddp`` (every process holds the whole model) or ``fsdp`` (FSDP2:
    LLM blocks, LLM, the head's trainable parts and the reference copy sharded across the processes; for a 7B
    policy on several GPUs). Ignored in a single process."""
    gradient_checkpointing: bool = False
    """Recompute the LLM blocks' activations in the backward instead of keeping them (less memory for a 7B
    policy, ~30 % more compute; generation keeps its KV cache: it runs in eval mode)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Prompt, sampling and state read-out of the policy."""
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    """Clip ε, β, loss weights, token aggregation."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Format / segmentation reward weights and rules."""
    advantage_std: Literal["sample", "population", "none"] = "sample"
    """Group-advantage scaling (see `segcompass.grpo.group_advantages`)."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (older ones are deleted after a newer one is complete)."""
    log_every: int = 1
    """Write a metrics.jsonl line every this many steps."""
    seed: int = 0
    """Seeds data order, rollouts and any random init."""
    resume: bool = True
    """Continue from the newest complete checkpoint in `out` when there is one."""
    wandb_project: str | None = None
    """Log to this Weights & Biases project (off by default; needs wandb installed)."""
    threads: int | None = None
    """torch intra-op threads (None: torch's default)."""

    def __post_init__(self) -> None:
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")
        if self.objective not in ("joint", "rl", "seg"):
            raise ValueError(f"objective must be 'joint', 'rl' or 'seg', got {self.objective!r}")
        if self.steps < 0 or self.prompts_per_step < 1:
            raise ValueError("need steps >= 0 and prompts_per_step >= 1")
        if self.objective != "seg" and self.group_size < 2:
            raise ValueError("GRPO needs group_size >= 2 (group-normalised advantages)")
        if self.group_size < 1 or self.lr <= 0 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("need group_size >= 1, lr > 0, checkpoint_every >= 1, keep_checkpoints >= 1")
        if self.head_loss_responses not in ("all", "complete"):
            raise ValueError(
                f"head_loss_responses must be 'all' or 'complete', got {self.head_loss_responses!r}"
            )
        if not 0.0 <= self.head_ema_decay < 1.0:
            raise ValueError(f"head_ema_decay must be in [0, 1), got {self.head_ema_decay}")
        if not 0.0 <= self.head_loss_llm_grad <= 1.0:
            raise ValueError(f"head_loss_llm_grad must be in [0, 1], got {self.head_loss_llm_grad}")

    @property
    def uses_policy_gradient(self) -> bool:
        return self.objective in ("joint", "rl")

    @property
    def trains_head(self) -> bool:
        return self.objective in ("joint", "seg")

    @classmethod
    def cpu_tiny(cls, **overrides: object) -> JointTrainConfig:
        """The CPU preset for the tiny backbone: 4 prompts × G 4, lr 1e-4 (×30/×25/×10/×5 for the head)."""
        base = cls(steps=150, prompts_per_step=4, group_size=4, lr=1e-4, checkpoint_every=25)
        for k, v in overrides.items():
            if not hasattr(base, k):
                raise ValueError(f"unknown JointTrainConfig field {k!r}")
            setattr(base, k, v)
        base.__post_init__()
        return base
