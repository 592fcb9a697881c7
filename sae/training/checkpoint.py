"""Checkpoints for an exact resume: written atomically, never overwritten, refused across configurations.

A checkpoint is a folder `checkpoints/tokens-<N>/` holding what sae-lens's `SAETrainer.save_checkpoint`
writes (the SAE's `cfg.json` + `sae_weights.safetensors`, `trainer_state.pt` with the optimiser, lr
scheduler, coefficient schedulers and dead-feature statistics, the activation scaler, the feature sparsity)
plus `segcompass_state.pt`: the run's fingerprint and config, the data position of every data slice, the
RNG states of every process, and the token count. It is written into `checkpoints/.tmp-...`, fsynced and
renamed into place, so an interrupted write (kill -9) leaves no checkpoint, only a temporary folder that
the next run removes; a write that fails (a full disk) removes its temporary folder at once and raises a
`WriteError` naming the checkpoint. `segcompass_state.pt` is written last and marks a complete checkpoint.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch

from sae.files.checkpoints import CHECKPOINT_DIR, Checkpoint, CheckpointSeries
from sae.saved import METADATA_FILE

from .config import config_differences

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_DIR",
    "SERIES",
    "STATE_FILE",
    "Checkpoint",
    "check_out_dir",
    "list_checkpoints",
    "load_state",
    "remove_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

STATE_FILE = "segcompass_state.pt"
SERIES = CheckpointSeries("tokens", 15, STATE_FILE)
"""`checkpoints/tokens-<N>/` (`sae.files.checkpoints`: the layout every trainer shares)."""


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA when present, Python)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out: Path) -> list[Checkpoint]:
    """Complete checkpoints in `out`, oldest first."""
    return SERIES.list(out)


def check_out_dir(out: Path, resume: bool) -> list[Checkpoint]:
    """Refuse an output folder holding a finished SAE, or an unfinished run unless resuming; returns its
    checkpoints (oldest first)."""
    if (Path(out) / METADATA_FILE).exists():
        raise FileExistsError(
            f"{out} already holds a trained SAE; choose another --out (nothing was changed)"
        )
    found = list_checkpoints(out)
    if found and not resume:
        raise FileExistsError(
            f"{out} holds checkpoints of an unfinished run (newest {found[-1].path.name}); "
            "pass --resume to continue it, or choose another --out"
        )
    return found


def remove_temporaries(out: Path) -> None:
    """Delete half-written checkpoint folders left by a killed run."""
    SERIES.remove_temporaries(out)


def save_checkpoint(trainer: Any, out: Path, tokens: int, state: dict[str, Any], keep: int) -> Path:
    """Write a checkpoint of `trainer` (an sae-lens `SAETrainer`) at `tokens` global tokens, atomically;
    then delete all but the newest `keep` complete checkpoints."""
    with SERIES.write(out, tokens, keep) as tmp:
        trainer.save_checkpoint(checkpoint_name=tmp.name, base_path=tmp.parent)
        torch.save({**state, "tokens": tokens}, tmp / STATE_FILE)
    return SERIES.path(out, tokens)


def load_state(
    ckpt: Checkpoint, fingerprint: str, config: dict[str, Any], context: dict[str, Any]
) -> dict[str, Any]:
    """Our part of a checkpoint; raises ValueError when another configuration (result-determining config
    fields, or the store / width / data slicing in `context`) wrote it."""
    try:
        state = torch.load(ckpt.path / STATE_FILE, weights_only=True)  # tensors, ints, strings, dicts only
    except (RuntimeError, EOFError, ValueError) as err:
        raise ValueError(
            f"checkpoint file {ckpt.path / STATE_FILE} is damaged ({err}); delete {ckpt.path} to resume from "
            "the checkpoint before it"
        ) from None
    if state.get("fingerprint") != fingerprint:
        diffs = config_differences(state.get("config", {}), config)
        diffs += config_differences(state.get("context", {}), context)
        detail = "; ".join(diffs) or "unknown difference"
        raise ValueError(
            f"checkpoint {ckpt.path} was written by another configuration ({detail}); "
            "resume with the same settings, or train into a new --out folder"
        )
    return state
