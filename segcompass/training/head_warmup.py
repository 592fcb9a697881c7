"""Supervised warm start of the head on the policy's own greedy responses (optional first stage).

The policy decodes each training prompt once (greedy), one no-grad forward gives the hook-layer and
concentration states, the fusion's standardisation of e_k is fitted on them, and the head alone trains on
them with L_seg + L_conf (docs/design.md §4 losses and lr multipliers). Cheap next to a joint step (no sampling
of G responses, no LLM backward), so a CPU run can give the head the few hundred updates it needs before the
joint objective starts. The LLM is untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from segcompass.data import RefDataset
from segcompass.head import build_optimizer, head_param_groups
from segcompass.loop_checkpoints import CheckpointedLoop, LoopState, open_loop
from segcompass.model import SegCompassModel
from segcompass.policy import generate_rollouts, policy_forward
from segcompass.stages import Stage, build_stage

from .batches import SampleSource

logger = logging.getLogger(__name__)


@dataclass
class HeadWarmupConfig:
    """The head's supervised warm start."""

    steps: int = 600
    """Optimiser steps of the head (0: no warm start)."""
    batch_size: int = 8
    """Prompts per step."""
    samples: int = 400
    """Training prompts decoded once and cycled through (the first n of the data set, in a seeded order)."""
    lr: float = 1e-4
    """Base learning rate; the head's groups use their multipliers (×30 / ×25 / ×10 / ×5)."""
    seed: int = 0
    """Seeds the order of the batches."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """Learning-rate schedule over the steps: constant, or cosine decay to 0 (the default: the head's val gIoU
    moves by ±0.03 between nearby steps at a constant rate; results/head_diagnosis.md §7)."""
    ema_decay: float = 0.995
    """Decay of an exponential moving average of the head's weights, which replaces them at the end
    (0: keep the last weights). Step t uses min(ema_decay, (1 + t) / (10 + t)), so short runs are not
    pulled back to the initial weights."""
    standardise_concentration: bool = True
    """Fit the fusion's standardisation of e_k (`SlotFusion.fit_concentration_stats`) on the decoded states
    before training; kept with the head for the joint stage, evaluation and saved models."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.samples < 1 or self.lr <= 0:
            raise ValueError("need steps >= 0, batch_size >= 1, samples >= 1 and lr > 0")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of every group's learning rate at `step` (0-based)."""
        if self.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * step / max(1, self.steps)))


@dataclass
class _CachedBatch:
    hook_states: torch.Tensor  # [B, T, D]
    concept_token_mask: torch.Tensor  # [B, T]
    concentration_states: torch.Tensor  # [B, K, D]
    embeddings: torch.Tensor  # [B, 256, g, g]
    targets: list[torch.Tensor]  # B × [n, S, S]


@torch.no_grad()
def _decode_batches(model: SegCompassModel, source: SampleSource, order: list[int], batch: int,
                    progress: bool) -> list[_CachedBatch]:  # fmt: skip
    out = []
    starts = range(0, len(order), batch)
    for s in tqdm(starts, desc="head warm start: decoding", disable=not progress, leave=False):
        samples = source.get(order[s : s + batch])
        ro = generate_rollouts(model.backbone, [x.image for x in samples], [x.text for x in samples],
                               model.policy, greedy=True)  # fmt: skip
        st = policy_forward(model.backbone, ro, model.policy)
        out.append(_CachedBatch(st.hook_states, st.concept_token_mask, st.concentration_states,
                                torch.stack([x.embedding for x in samples]).float(),
                                [x.targets for x in samples]))  # fmt: skip
    return out


def warm_start_head(
    model: SegCompassModel, dataset: RefDataset, cfg: HeadWarmupConfig, progress: bool = True
) -> pd.DataFrame:
    """Train `model.head` in place on greedy-decoded policy states; returns the loss per step."""
    if cfg.steps == 0:
        return pd.DataFrame(columns=["step", "loss", "seg", "conf"])
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    n = min(cfg.samples, len(dataset))
    order = torch.randperm(n, generator=g).tolist()
    was = model.training
    model.eval()
    batches = _decode_batches(model, SampleSource(dataset, model.head), order, cfg.batch_size, progress)
    decode_s = time.perf_counter() - t0
    if cfg.standardise_concentration:
        states = torch.cat([b.concentration_states.flatten(0, 1) for b in batches])  # [n·K, D]
        found = int((states.abs().sum(-1) > 0).sum())
        if found >= 2:
            model.head.fusion.fit_concentration_stats(states)
        else:
            logger.warning(
                "head warm start: %d concentration states found; e_k standardisation left off", found
            )
    groups = head_param_groups(model.head, cfg.lr, [])
    params = [p for grp in groups for p in grp["params"]]
    opt = build_optimizer(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
    trainable = [(name, p) for name, p in model.head.named_parameters() if p.requires_grad]
    ema = {name: p.detach().clone() for name, p in trainable} if cfg.ema_decay > 0 else None
    model.head.train()
    # The head without its frozen SAE (`concepts`): what the loop changes, checkpointed inside a stage's build.
    changed = [m for name, m in model.head.named_children() if name != "concepts"]
    settings = {"desc": "head warm start", "config": dataclasses.asdict(cfg), "batches": len(batches)}
    state = LoopState(opt, sched, tensors={f"ema.{k}": v for k, v in (ema or {}).items()})
    with CheckpointedLoop(
        open_loop(settings, changed, state), cfg.steps, "head warm start", progress
    ) as loop:
        for step in loop.steps():
            b = batches[step % len(batches)]
            out = model.head(b.hook_states, b.concept_token_mask, b.concentration_states, b.embeddings,
                             b.targets, step=step)  # fmt: skip
            losses = out.losses
            with loop.update():
                opt.zero_grad(set_to_none=True)
                losses.total.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                if ema is not None:
                    with torch.no_grad():
                        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                        for name, p in trainable:
                            ema[name].lerp_(p.detach(), 1.0 - decay)
            loop.record(float(losses.total.detach()),
                        {"seg": float(losses.seg.detach()), "conf": float(losses.conf.detach())})  # fmt: skip
    rows = [
        {"step": i, "loss": loss, **parts}
        for i, (loss, parts) in enumerate(zip(loop.losses, loop.parts, strict=True))
    ]
    if ema is not None:
        with torch.no_grad():
            for name, p in trainable:
                p.copy_(ema[name])
    model.train(was)
    for p in model.head.parameters():
        p.grad = None
    logger.info(
        "head warm start: %d steps in %.0f s (decoding %.0f s)", cfg.steps, time.perf_counter() - t0, decode_s
    )
    return pd.DataFrame(rows)


HEAD_FILE = "head.safetensors"
HISTORY_FILE = "losses.csv"


def _build_warm_start(
    config: dict, folder: Path, *, model: SegCompassModel, dataset: RefDataset, cfg: HeadWarmupConfig,
    progress: bool,
) -> None:  # fmt: skip
    """The stage's build: `warm_start_head`, then the head's state without the frozen SAE (buffers included:
    the e_k standardisation lives there) and the losses."""
    history = warm_start_head(model, dataset, cfg, progress)
    state = {
        k: v.detach().contiguous()
        for k, v in model.head.state_dict().items()
        if not k.startswith("concepts.")
    }
    save_file(state, str(folder / HEAD_FILE))
    history.to_csv(folder / HISTORY_FILE, index=False)


HEAD_WARMUP_STAGE: Stage[dict] = Stage(
    "head-warmup", 1, _build_warm_start, "segcompass train --head-warmup-steps N", subdir="head_warmup",
    resumable=True,
)  # fmt: skip
"""The head's warm start as a cached stage under a run's out folder (built by `segcompass train` /
`segcompass ablation`; the build is bound to the model and data set it trains), resumable."""


def cached_warm_start(
    model: SegCompassModel,
    dataset: RefDataset,
    cfg: HeadWarmupConfig,
    out: str | Path,
    identity: str,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """`warm_start_head` as a cached stage under `<out>/head_warmup/head-warmup-<sha>/`, keyed by `cfg` and
    `identity` (name it by everything else that decides the result: backbone, SAE, data, policy); built if
    missing (logged), loaded otherwise. A file of the previous layout (`<out>/head_warmup/<identity>.safetensors`)
    still loads. It is built in `<key>.partial` under a lock and its loop checkpoints, so an interrupted build
    continues (`segcompass.loop_checkpoints`); DDP ranks wait for the one that builds it."""
    out = Path(out)
    legacy = out / HEAD_WARMUP_STAGE.subdir / f"{identity}.safetensors"
    config = {"identity": identity, "warmup": dataclasses.asdict(cfg)}
    if legacy.is_file():
        path = legacy
    else:
        build = functools.partial(_build_warm_start, model=model, dataset=dataset, cfg=cfg, progress=progress)
        path = build_stage(dataclasses.replace(HEAD_WARMUP_STAGE, build=build), config, out) / HEAD_FILE
    state = load_file(str(path))
    model.head.load_state_dict(state, strict=False)
    logger.info("head warm start loaded from %s", path)
    return state
