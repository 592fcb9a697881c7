"""The joint training loop: setup (what trains, reference, optimiser, DDP), resume, steps, checkpoints.

    result = train_joint(JointTrainConfig.cpu_tiny(out="runs/j"), model, dataset)

Runs in one process or under ``torchrun`` (torch DDP; gloo on CPU, nccl on GPUs): each process takes its
share of every global batch, DDP averages the gradients, rank 0 writes checkpoints and metrics.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from sae.files import atomic_write_text, lock_output
from sae.identity import part_fingerprints
from sae.training.distributed import DistInfo, barrier, gather_objects, init_distributed
from segcompass.data import RefDataset
from segcompass.head import build_optimizer, freeze_backbone_up_to_hook, head_param_groups
from segcompass.head.image_encoder import ImageEmbeddingCache
from segcompass.model import SegCompassModel
from segcompass.model.lora import AdapterFreeReference, apply_lora, has_lora
from segcompass.rewards import RewardFn

from .batches import DataCursor, SampleSource, shard_for_rank
from .checkpoint import (
    fingerprint,
    list_checkpoints,
    load_checkpoint,
    load_ema,
    remove_temporaries,
    run_settings,
    save_checkpoint,
)
from .config import JointTrainConfig
from .ema import HeadEMA
from .sharding import gather_model_state, gather_training_state, shard_model
from .step import joint_step

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A finished (or resumed-and-finished) run."""

    history: pd.DataFrame
    """One row per logged step (this run and the resumed part): step, losses, rewards, timings."""
    final: Path | None
    """Folder of the final model (`load_model` reads it); None on ranks other than 0."""
    resumed_from: int
    """Step the run resumed from (0 for a fresh run)."""


def setup_trainable(model: SegCompassModel, cfg: JointTrainConfig) -> list[dict[str, Any]]:
    """Freeze what must not train and return the optimiser's parameter groups (docs/design.md §4)."""
    bb = model.backbone
    if cfg.train_llm and cfg.lora.lora_rank > 0:
        llm_params = apply_lora(model.llm, bb.decoder_layers, bb.hook_layer, cfg.lora)
    elif cfg.train_llm:
        llm_params = freeze_backbone_up_to_hook(model.llm, bb.decoder_layers, bb.hook_layer)
    else:
        model.llm.requires_grad_(False)
        llm_params = []
    groups = head_param_groups(model.head, cfg.lr, llm_params, cfg.weight_decay, cfg.lr_multipliers)
    if not cfg.trains_head:  # RL only: the head stays at its initial weights
        for g in groups:
            if g["name"] != "llm":
                for p in g["params"]:
                    p.requires_grad_(False)
        groups = [g for g in groups if g["name"] == "llm"]
    if not groups:
        raise ValueError(
            "nothing to train: objective 'rl' with train_llm=False leaves no trainable parameter"
        )
    return groups


def build_reference(model: SegCompassModel, cfg: JointTrainConfig) -> nn.Module | None:
    """Frozen copy of the initial policy for the KL term (None when the objective has no KL); with LoRA the
    policy itself with its adapters off."""
    if not cfg.uses_policy_gradient or cfg.loss.beta <= 0:
        return None
    if has_lora(model.llm):
        return AdapterFreeReference(model.llm)
    ref = copy.deepcopy(model.llm)
    ref.requires_grad_(False)
    return ref.eval()


def _lr_lambda(warmup: int):
    return lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _truncate_history(path: Path, before_step: int) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl with step < before_step (later ones came after the resumed checkpoint)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["step"] < before_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _mean_over_ranks(metrics: dict[str, float], info: DistInfo) -> dict[str, float]:
    if not info.distributed:
        return metrics
    every = gather_objects(metrics, info)
    return {k: sum(m[k] for m in every) / len(every) for k in metrics}


def train_joint(
    cfg: JointTrainConfig,
    model: SegCompassModel,
    dataset: RefDataset,
    *,
    embedding_cache: ImageEmbeddingCache | None = None,
    context: dict[str, Any] | None = None,
    progress: bool = True,
    reward_fn: RewardFn | None = None,
) -> TrainResult:
    """Train `model` on `dataset` with `cfg`; resumes from the newest checkpoint in `cfg.out`.

    `context` (data set identity, backbone, SAE path …) enters the checkpoint fingerprint, and so does the
    identity of the model's initial weights per part (backbone, SAE, SAM, head: `sae.identity`), so a run is
    never resumed on other data or another model. `reward_fn` replaces the configured reward (its
    qualified name enters the fingerprint). `cfg.out` is locked for the run: a second run into it is refused.
    """
    info = init_distributed("cpu" if not torch.cuda.is_available() else "auto")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if (cfg.policy.num_slots, cfg.policy.mode) != (model.policy.num_slots, model.policy.mode):
        raise ValueError(
            f"the training config's policy has K = {cfg.policy.num_slots} ({cfg.policy.mode}) but the model was "
            f"built with K = {model.policy.num_slots} ({model.policy.mode}); K is set once, by the PolicyConfig "
            "given to build_model (pass the same one to JointTrainConfig)"
        )
    if cfg.prompts_per_step % info.world_size:
        raise ValueError(
            f"prompts_per_step {cfg.prompts_per_step} is not divisible by {info.world_size} processes"
        )
    with lock_output(out, "joint training"):
        return _train_locked(cfg, model, dataset, info, embedding_cache, context, progress, reward_fn)


def _train_locked(
    cfg: JointTrainConfig,
    model: SegCompassModel,
    dataset: RefDataset,
    info: DistInfo,
    embedding_cache: ImageEmbeddingCache | None,
    context: dict[str, Any] | None,
    progress: bool,
    reward_fn: RewardFn | None,
) -> TrainResult:
    """`train_joint` once its output folder is locked."""
    out = Path(cfg.out)
    ctx = {"dataset": f"{dataset.source}/{dataset.split}/{len(dataset)}", "world_size": info.world_size,
           **(context or {}), "weights": part_fingerprints(model)}  # fmt: skip
    if reward_fn is not None:
        ctx["reward_fn"] = (
            f"{getattr(reward_fn, '__module__', '')}.{getattr(reward_fn, '__qualname__', repr(reward_fn))}"
        )
    fp = fingerprint(cfg, ctx)
    torch.manual_seed(cfg.seed)
    model.to(info.device)
    groups = setup_trainable(model, cfg)
    if cfg.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for g in groups for p in g["params"]]
    reference = build_reference(model, cfg)
    sharded = info.distributed and cfg.parallel == "fsdp"
    if sharded:  # FSDP2 replaces the parameter objects: shard first, then collect the groups again
        shard_model(model, reference)
        groups = setup_trainable(model, cfg)
        trainable = [p for g in groups for p in g["params"]]
    optimizer = build_optimizer(groups)
    ema = HeadEMA(model, cfg.head_ema_decay) if cfg.head_ema_decay > 0 and cfg.trains_head else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.warmup_steps))
    forward_module: nn.Module = model
    if info.distributed and not sharded:
        forward_module = DistributedDataParallel(model, find_unused_parameters=True)
    source = SampleSource(dataset, model.head, embedding_cache)
    cursor = DataCursor()
    metrics_file = out / "metrics.jsonl"
    start = 0
    if info.is_main:
        remove_temporaries(out)
    barrier(info)
    found = list_checkpoints(out)
    if found and not cfg.resume:
        raise FileExistsError(
            f"{out} holds checkpoints (newest {found[-1].path.name}); set resume=True or use another out"
        )
    history: list[dict[str, Any]] = []
    if found:
        step_done, path = found[-1].step, found[-1].path
        if step_done > cfg.steps:
            raise ValueError(
                f"{out} holds a checkpoint at step {step_done}, past steps={cfg.steps}: resuming would return the "
                f"step-{step_done} model as if it had trained {cfg.steps} steps; use another out folder or steps ≥ {step_done}"
            )
        state = load_checkpoint(path, model, optimizer, scheduler, fp, sharded=sharded,
                                settings=run_settings(cfg, ctx))  # fmt: skip
        cursor.load_state_dict(state["cursor"])
        if ema is not None:
            ema.load_state_dict(load_ema(path))
        start = step_done
        logger.info("resuming from %s (step %d)", path, start)
    if info.is_main:
        history = _truncate_history(metrics_file, start)
        atomic_write_text(out / "config.json", json.dumps({"config": asdict(cfg), "context": ctx, "fingerprint": fp},
                                                          indent=2, default=str))  # fmt: skip
    wandb_run = _maybe_wandb(cfg, ctx, info)
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {cfg.objective}",
               disable=not (progress and info.is_main))  # fmt: skip
    step = start
    try:
        for step in bar:
            indices = shard_for_rank(
                cursor.next_global_batch(len(source), cfg.prompts_per_step, cfg.seed),
                info.rank,
                info.world_size,
            )
            torch.manual_seed(
                cfg.seed * 1_000_003 + step * 7919 + info.rank
            )  # rollouts: a function of the step
            batch = source.get(indices)
            result = joint_step(
                model, forward_module, reference, optimizer, batch, cfg, step, trainable, reward_fn
            )
            if ema is not None:
                ema.update()
            scheduler.step()
            metrics = _mean_over_ranks(
                {**result.metrics, **{f"time/{k}": v for k, v in result.timings.items()}}, info
            )
            row = {"step": step, "lr": scheduler.get_last_lr()[0], **metrics}
            if info.is_main:
                history.append(row)
                if step % cfg.log_every == 0 or step == cfg.steps - 1:
                    _append_jsonl(metrics_file, row)
                    if wandb_run is not None:
                        wandb_run.log(row, step=step)
                bar.set_postfix(
                    {"reward": f"{row['reward/total']:.3f}", "seg": f"{row['loss/seg']:.3f}"}, refresh=False
                )
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                _checkpoint(out, done, model, optimizer, scheduler, cursor, fp, cfg, info, sharded, ema, ctx)
    except KeyboardInterrupt:
        logger.warning("interrupted at step %d; the newest checkpoint in %s is where a resume continues", step,
                       out / "checkpoints")  # fmt: skip
        raise
    if ema is not None:
        ema.copy_to(model)  # the run ends with the head at its average (saved and in memory)
    final = None
    full_state = gather_model_state(model) if sharded else None  # collective
    if info.is_main:
        final = model.save(
            out / "final", extra={"step": cfg.steps, "train_config": asdict(cfg), "context": ctx},
            state_dict=full_state,
        )  # fmt: skip
    barrier(info)
    if wandb_run is not None:
        wandb_run.finish()
    return TrainResult(pd.DataFrame(history), final, start)


def _checkpoint(
    out, step, model, optimizer, scheduler, cursor, fp, cfg, info, sharded=False, ema=None, ctx=None
) -> None:
    weights, optim = gather_training_state(model, optimizer) if sharded else (None, None)  # collective
    ema_state = ema.state_dict() if ema is not None else None  # collective when sharded
    if info.is_main:
        state = {"cursor": cursor.state_dict(), "fingerprint": fp, "settings": run_settings(cfg, ctx or {})}
        save_checkpoint(out, step, model, optimizer, scheduler, state, cfg.keep_checkpoints, weights, optim,
                        ema_state)  # fmt: skip
    barrier(info)


def _maybe_wandb(cfg: JointTrainConfig, ctx: dict[str, Any], info: DistInfo):
    if not cfg.wandb_project or not info.is_main or os.environ.get("WANDB_MODE") == "disabled":
        return None
    try:
        import wandb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("wandb_project is set but wandb is not installed (pip install wandb)") from exc
    return wandb.init(project=cfg.wandb_project, config={**asdict(cfg), **ctx}, dir=str(cfg.out))
