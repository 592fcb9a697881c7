"""Resumable checkpoints of joint training: `out/checkpoints/step-<N>/`, written atomically.

A checkpoint holds the trainable weights (`trainable.safetensors`, by parameter name), the head's moving
average when the run keeps one (`ema.safetensors`), the optimiser
and scheduler states (`optimizer.pt`, loaded with ``weights_only=True``), and `state.json`: step, data
cursor, the config fingerprint and the settings it hashes (config, data, identity of the model's initial
weights per part), so a refused resume names what differs. Rollouts are seeded per (seed, step, rank), so
no RNG state is needed for an exact resume. The folder is written as `.tmp-…` (`sae.files.checkpoints`,
the layout every trainer shares: umask modes, fsync, rename); `state.json` is written last, so a kill -9 at any moment leaves either a
complete checkpoint or a temporary folder the next run deletes, and a failed write (a full disk) removes
its temporary folder and raises a `WriteError` naming the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sae.files import read_json
from sae.files.checkpoints import Checkpoint, CheckpointSeries
from sae.training.config import config_differences

from .config import JointTrainConfig

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
EMA_FILE = "ema.safetensors"
SERIES = CheckpointSeries("step", 8, STATE_FILE)
"""`checkpoints/step-<N>/` (`sae.files.checkpoints`: the layout every trainer shares)."""
_NOT_RESULT_FIELDS = ("out", "steps", "checkpoint_every", "keep_checkpoints", "log_every", "resume",
                      "wandb_project", "threads", "gradient_checkpointing")  # fmt: skip


def run_settings(cfg: JointTrainConfig, context: dict[str, Any]) -> dict[str, Any]:
    """Every setting that decides the result (not where it is written or how long it runs), as JSON values."""
    data = {k: v for k, v in asdict(cfg).items() if k not in _NOT_RESULT_FIELDS}
    return json.loads(json.dumps({"config": data, "context": context}, default=str))


def fingerprint(cfg: JointTrainConfig, context: dict[str, Any]) -> str:
    """Hash of `run_settings`."""
    blob = json.dumps(run_settings(cfg, context), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def list_checkpoints(out: str | os.PathLike) -> list[Checkpoint]:
    """Complete checkpoints (`.step`, `.path`), oldest first."""
    return SERIES.list(out)


def remove_temporaries(out: str | os.PathLike) -> None:
    """Delete half-written checkpoint folders left by a killed run."""
    SERIES.remove_temporaries(out)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (detached CPU copies)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    out: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `checkpoints/step-<step>/` atomically, then keep only the newest `keep` checkpoints.

    `weights` / `optimizer_state`: full states gathered from a sharded run (`sharding.gather_training_state`);
    default: this process's trainable parameters and `optimizer.state_dict()`. `ema`: the head's moving
    average (`HeadEMA.state_dict`), written as `ema.safetensors`."""
    with SERIES.write(out, step, keep) as tmp:
        save_file(
            {
                k: v.contiguous()
                for k, v in (weights if weights is not None else trainable_state(model)).items()
            },
            str(tmp / "trainable.safetensors"),
        )
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / EMA_FILE))
        opt_state = optimizer_state if optimizer_state is not None else optimizer.state_dict()
        torch.save(
            {
                "optimizer": opt_state,
                "scheduler": scheduler.state_dict(),
                "full_state": optimizer_state is not None,
            },
            tmp / "optimizer.pt",
        )
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
    return SERIES.path(out, step)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys ("weights.head.concepts")."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_ema(path: Path) -> dict[str, torch.Tensor]:
    """The head's moving average saved in checkpoint `path` (a clear error when the run kept none)."""
    file = Path(path) / EMA_FILE
    if not file.exists():
        raise FileNotFoundError(
            f"checkpoint {path} holds no {EMA_FILE}: it was written without head_ema_decay"
        )
    return load_file(str(file))


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    expected_fingerprint: str,
    sharded: bool = False,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimiser and scheduler from `path`; returns its `state.json` content.

    `sharded`: the model is FSDP-sharded (every process reads the full files and keeps its shards).
    `settings`: this run's `run_settings`, to name what differs when the fingerprints do."""
    state = read_json(path / STATE_FILE, "checkpoint state")
    if state.get("fingerprint") != expected_fingerprint:
        theirs, ours = state.get("settings") or {}, settings or {}
        diffs = [
            f"{part}.{d}"
            for part in ("config", "context")
            for d in config_differences(_flat(theirs.get(part, {})), _flat(ours.get(part, {})))
        ]
        detail = (
            "; ".join(diffs)
            if theirs and diffs
            else f"fingerprint {state.get('fingerprint')} != {expected_fingerprint}"
        )
        raise ValueError(
            f"checkpoint {path} was written by another configuration ({detail}); resume with the same settings "
            "and model, or train into a new out folder"
        )
    weights = load_file(str(path / "trainable.safetensors"))
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    if sharded or opt.get("full_state"):
        if not (sharded and opt.get("full_state")):
            raise ValueError(
                f"checkpoint {path} was written by a {'sharded' if opt.get('full_state') else 'DDP / single'} run; "
                "resume it with the same parallel setting"
            )
        from .sharding import load_training_state

        load_training_state(model, optimizer, weights, opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        return state
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise ValueError(
            f"checkpoint {path} does not fit the model: missing {missing[:5]}, unknown {unknown[:5]}"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return state
