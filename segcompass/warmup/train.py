"""The warm-up training loop: AdamW on every parameter of a tiny backbone (vision tower and projector
included), response-only cross-entropy, warm-up + cosine/linear schedule, gradient clipping, seeded."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from segcompass.backbones import Backbone, TokenType, build_tiny
from segcompass.world.generate import generate_split
from segcompass.world.scene import WorldSample

from .config import TASKS, WarmupConfig
from .encode import encode, forward_outputs, response_loss
from .referent import REFERENT_FIELDS, ReferentProbe, referent_loss
from .tasks import Example, format_example, lite_sample, make_example

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A trained backbone and how its training went."""

    backbone: Backbone
    """The trained backbone (in eval mode)."""
    losses: list[float] = field(default_factory=list)
    """Training loss of every step."""
    tasks: list[str] = field(default_factory=list)
    """Task of every step's batch."""
    wall_s: float = 0.0
    """Seconds for the whole call (scene generation included)."""
    scene_s: float = 0.0
    """Seconds spent generating the training scenes."""
    referent_accuracy: dict[str, float] = field(default_factory=dict)
    """Held-out (val scenes, teacher-forced format responses) accuracy of the referent probe per field,
    beside the majority rate as ``<field>_majority``; empty when the referent objective is off."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_scenes(config: WarmupConfig, split: str, n: int, progress: bool = False) -> list[WorldSample]:
    """Samples 0 … n − 1 of a world split, without masks (the tasks do not need them)."""
    it = generate_split(config.world_config(), split, n)
    bar = tqdm(it, total=n, desc=f"world {split}", disable=not progress, leave=False)
    return [lite_sample(s) for s in bar]


def lr_factor(config: WarmupConfig) -> Callable[[int], float]:
    """Learning-rate multiplier of step s: linear warm-up, then cosine or linear decay to min_lr_fraction."""
    warm = int(config.warmup_fraction * config.steps)
    floor = config.min_lr_fraction

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, config.steps - warm)
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if config.schedule == "cosine" else 1 - frac
        return floor + (1 - floor) * shape

    return factor


def make_optimizer(model: torch.nn.Module, config: WarmupConfig) -> torch.optim.AdamW:
    """AdamW over every parameter; no weight decay on biases and norm weights (1-D tensors)."""
    for p in model.parameters():
        p.requires_grad_(True)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-8)


def step_loss(
    backbone: Backbone, examples: list[Example], config: WarmupConfig, probe: ReferentProbe | None
) -> torch.Tensor:
    """Response cross-entropy of a batch, plus `referent_weight` × the referent loss when `probe` is given."""
    batch = encode(backbone, examples)
    logits, last = forward_outputs(backbone, batch, config.bf16, last_states=probe is not None)  # [B, T, V]
    loss = response_loss(logits, batch.labels)
    if probe is not None:
        labels = torch.tensor([e.referent for e in examples], dtype=torch.long)  # [B, F]
        loss = (
            loss
            + config.referent_weight * referent_loss(probe, last, batch.prepared.token_types, labels).loss
        )
    return loss


@torch.no_grad()
def referent_accuracy(
    backbone: Backbone,
    probe: ReferentProbe,
    scenes: list[WorldSample],
    config: WarmupConfig,
    batch_size: int = 32,
) -> dict[str, float]:
    """Probe accuracy per field over the concentration tokens of `scenes`' format examples, with majority rates."""
    examples = [format_example(s, config.num_slots, config.restate_target) for s in scenes]
    hits: dict[str, float] = {}
    count = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = encode(backbone, chunk)
        _, last = forward_outputs(backbone, batch, config.bf16, last_states=True)
        labels = torch.tensor([e.referent for e in chunk], dtype=torch.long)
        n = int((batch.prepared.token_types == int(TokenType.CONCENTRATION)).sum())
        acc = referent_loss(probe, last, batch.prepared.token_types, labels).accuracy
        hits = {f: hits.get(f, 0.0) + a * n for f, a in acc.items()}
        count += n
    labels = np.asarray([e.referent for e in examples])  # [N, F]
    out = {f: h / max(count, 1) for f, h in hits.items()}
    for j, field_name in enumerate(REFERENT_FIELDS):
        out[f"{field_name}_majority"] = float(np.bincount(labels[:, j]).max() / len(labels))
    return out


def train(
    config: WarmupConfig,
    backbone: Backbone | None = None,
    *,
    scenes: list[WorldSample] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Warm up a tiny backbone (built from `config` unless given) and return it with its loss curve.

    Deterministic for a config: the init, the per-step task, the sampled scenes and the questions derive
    from `config.seed`; the scenes are samples 0 … n − 1 of the world's "train" split.
    """
    start = time.perf_counter()
    seed_everything(config.seed)
    if backbone is None:
        backbone = build_tiny(config.family, seed=config.seed, spec=config.tiny_spec())
    if scenes is None:
        scenes = build_scenes(config, "train", config.train_scenes, progress)
    scene_s = time.perf_counter() - start
    model = backbone.model.train()
    optimizer = make_optimizer(model, config)
    probe = None
    if config.referent_weight > 0:
        probe = ReferentProbe(backbone.hidden_size).train()
        optimizer.add_param_group({"params": list(probe.parameters()), "weight_decay": config.weight_decay})
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x5747]))
    tasks = [t for t in TASKS if config.task_weights.get(t, 0) > 0]
    weights = np.asarray([config.task_weights[t] for t in tasks], dtype=float)
    max_count = config.world_config().max_objects
    result = TrainResult(backbone)
    ema: dict[str, float] = {}
    bar = tqdm(range(config.steps), desc=f"warm-up {config.family}", disable=not progress)
    for step in bar:
        task = tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))]
        picks = rng.choice(len(scenes), size=config.batch_size, replace=config.batch_size > len(scenes))
        examples = [
            make_example(scenes[int(i)], task, rng, config.num_slots, max_count, config.restate_target)
            for i in picks
        ]
        loss = step_loss(backbone, examples, config, probe if task == "format" else None)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"warm-up loss is {value} at step {step} (task {task})")
        result.losses.append(value)
        result.tasks.append(task)
        ema[task] = value if task not in ema else 0.9 * ema[task] + 0.1 * value
        bar.set_postfix({f"loss_{t}": f"{v:.3f}" for t, v in sorted(ema.items())}, refresh=False)
        if step % 100 == 0 or step == config.steps - 1:
            logger.debug("step %d task %s loss %.4f lr %.2e", step, task, value, scheduler.get_last_lr()[0])
    model.eval()
    if probe is not None:
        val = build_scenes(config, "val", config.val_scenes)
        result.referent_accuracy = referent_accuracy(backbone, probe, val, config)
        logger.info("referent probe, held-out: %s", result.referent_accuracy)
    result.wall_s = time.perf_counter() - start
    result.scene_s = scene_s
    logger.info(
        "warm-up: %d steps in %.1f s (%.1f s generating %d scenes); final loss by task %s",
        config.steps, result.wall_s, scene_s, len(scenes), {t: round(v, 3) for t, v in ema.items()},
    )  # fmt: skip
    return result
