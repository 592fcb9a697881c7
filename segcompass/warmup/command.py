"""`segcompass warmup`: build (or load) the cached warmed-up tiny backbone and print its evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import torch

from .cache import WarmupArtifact, warm_up_artifact
from .config import WarmupConfig

logger = logging.getLogger(__name__)


@dataclass
class WarmupCommandConfig:
    """Warm up a tiny backbone on the synthetic world (describe scenes, answer attribute questions, emit
    <think>…</think> + K <REF_POS>), cache it keyed by its config, and print the held-out evaluation
    (trained vs random-init control, beside chance and majority rates) and the cache folder. A second
    run with the same settings loads the cached backbone without training."""

    family: str = "qwen2_5_vl"
    """Backbone family of the tiny preset: qwen2_5_vl or llava."""
    seed: int = 0
    """Seed of the random init, the questions and the batch order."""
    steps: int = WarmupConfig.steps
    """Optimiser steps."""
    batch_size: int = WarmupConfig.batch_size
    """Examples per step."""
    lr: float = WarmupConfig.lr
    """Peak AdamW learning rate (linear warm-up, then cosine decay to 0.1x)."""
    num_slots: int = WarmupConfig.num_slots
    """K: <REF_POS> tokens after </think> in the output-format task."""
    train_scenes: int = WarmupConfig.train_scenes
    """Synthetic training scenes generated up front."""
    val_scenes: int = WarmupConfig.val_scenes
    """Held-out scenes for the evaluation (one question of each type per scene)."""
    format_eval: int = WarmupConfig.format_eval
    """Held-out instructions whose greedy output is checked for the format."""
    bf16: bool = False
    """bf16 autocast (not faster for training on the 2-core development CPU)."""
    cache_dir: str = ""
    """Cache root; warm-ups live under its backbones/ (default: $SEGCOMPASS_CACHE or ~/.cache/segcompass)."""
    force: bool = False
    """Retrain and replace the cached entry."""
    threads: int = 0
    """torch CPU threads (0: torch's default). 1 avoids stalls when other jobs share the cores."""


def to_warmup_config(cfg: WarmupCommandConfig) -> WarmupConfig:
    """The `WarmupConfig` the command line describes (the other fields keep their defaults)."""
    return WarmupConfig(
        family=cfg.family,
        seed=cfg.seed,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        num_slots=cfg.num_slots,
        train_scenes=cfg.train_scenes,
        val_scenes=cfg.val_scenes,
        format_eval=cfg.format_eval,
        bf16=cfg.bf16,
    )


def main(cfg: WarmupCommandConfig) -> WarmupArtifact:
    """CLI entry: warm up (or load), then print the evaluation table and the cache path."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    artifact = warm_up_artifact(to_warmup_config(cfg), cfg.cache_dir or None, force=cfg.force)
    info = artifact.train_info
    origin = "loaded from cache" if artifact.cached else "trained"
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(f"\nWarm-up {artifact.config.key()} ({origin}; training took {info.get('wall_s', 0):.0f} s)")
        print("Held-out evaluation (accuracy by candidate log-likelihood; format by greedy decoding):")
        print(artifact.evaluation.to_string(index=False))
        if info.get("referent_accuracy"):
            print(
                "Referent probe of the <REF_POS> states (held-out, teacher-forced):",
                info["referent_accuracy"],
            )
    print(f"\nCached backbone: {artifact.path}")
    print(f"Load it with load_backbone({str(artifact.path)!r})")
    if artifact.config.key() == WarmupConfig(family=cfg.family, seed=cfg.seed).key():
        print(f"or resolve_backbone('warm:{cfg.family}') (e.g. --backbone warm:{cfg.family})")
    return artifact
