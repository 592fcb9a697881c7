"""The optimisation loop every pretraining stage shares: AdamW, linear warm-up then cosine decay, gradient
clipping, a seeded batch order, a progress bar, a non-finite-loss check, and checkpoints inside a stage's
build (`segcompass.loop_checkpoints`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from segcompass.loop_checkpoints import CheckpointedLoop, LoopState, open_loop

logger = logging.getLogger(__name__)


@dataclass
class Schedule:
    """Optimiser settings of one stage."""

    steps: int = 400
    """Optimiser steps."""
    batch_size: int = 32
    """Examples per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on 1-D tensors: biases and norms)."""
    warmup_fraction: float = 0.05
    """Fraction of the steps with a linear warm-up from 0."""
    min_lr_fraction: float = 0.05
    """Final learning rate as a fraction of `lr` (cosine decay)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need steps >= 0, batch_size >= 1, lr > 0; got {self}")

    def factor(self, step: int) -> float:
        """Learning-rate multiplier at `step`."""
        warm = int(self.warmup_fraction * self.steps)
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, self.steps - warm)
        return self.min_lr_fraction + (1 - self.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * frac))


@dataclass
class LoopRecord:
    """What a stage's loop did."""

    losses: list[float] = field(default_factory=list)
    """Total loss of every step."""
    parts: list[dict[str, float]] = field(default_factory=list)
    """Loss parts of every step."""
    wall_s: float = 0.0
    """Seconds in the loop."""


def train_only(model: nn.Module, trained: Iterable[nn.Module]) -> None:
    """Freeze every parameter of `model` except those of the `trained` modules."""
    for p in model.parameters():
        p.requires_grad_(False)
    for m in trained:
        for p in m.parameters():
            p.requires_grad_(True)


def adamw(modules: Iterable[nn.Module], schedule: Schedule) -> torch.optim.AdamW:
    """AdamW over every parameter of `modules`, no decay on 1-D tensors."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": schedule.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.98), eps=1e-8)


def run_loop(
    modules: list[nn.Module],
    schedule: Schedule,
    step_loss: Callable[[int, np.random.Generator], tuple[torch.Tensor, dict[str, float]]],
    seed: int,
    desc: str,
    progress: bool = True,
) -> LoopRecord:
    """Train `modules` for `schedule.steps` steps of `step_loss(step, rng)` → (loss, parts).

    The batch order is drawn from `rng` (seeded by `seed`), so a stage is deterministic for its config.
    Inside a stage's build (`loop_checkpoints.checkpointing`) the loop checkpoints and continues an
    interrupted run from its last checkpoint, with the same result as an uninterrupted one."""
    for m in modules:
        m.train()
    optimizer = adamw(modules, schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9E7A]))
    settings = {"desc": desc, "seed": seed, "schedule": asdict(schedule)}
    checkpoint = open_loop(settings, modules, LoopState(optimizer, scheduler, numpy_rngs=(rng,)))
    ema: dict[str, float] = {}
    with CheckpointedLoop(checkpoint, schedule.steps, desc, progress) as loop:
        for step in loop.steps():
            loss, parts = step_loss(step, rng)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"{desc}: loss is {value} at step {step} ({parts})")
            with loop.update():
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loop.record(value, parts)
            for k, v in parts.items():
                ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
            loop.bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()}, refresh=False)
            if step % 100 == 0:
                logger.debug("%s step %d loss %.4f %s", desc, step, value, parts)
    for m in modules:
        m.eval()
    record = LoopRecord(loop.losses, loop.parts, loop.wall_s)
    logger.info("%s: %d steps in %.1f s; final %s", desc, schedule.steps, record.wall_s, ema)
    return record
