"""`segcompass warmup-sam`: build (or show) the cached tiny-SAM warm-up."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .cache import tiny_sam
from .config import SamWarmupConfig


@dataclass
class SamWarmupCommandConfig:
    """Train the tiny SAM of the CPU head once (SAM's promptable objective on the world) and cache it."""

    seed: int = 0
    """Seed of the init, prompts and batch order."""
    steps: int = SamWarmupConfig.steps
    """Optimiser steps."""
    batch_images: int = SamWarmupConfig.batch_images
    """Images per step."""
    attribute_weight: float = SamWarmupConfig.attribute_weight
    """Weight of the auxiliary per-patch colour / shape classification (0: SAM's objective alone)."""
    train_scenes: int = SamWarmupConfig.train_scenes
    """Training scenes."""
    val_scenes: int = SamWarmupConfig.val_scenes
    """Held-out scenes for the evaluation."""
    cache_dir: str = ""
    """Cache root; tiny SAMs live under its sam/ (default `$SEGCOMPASS_CACHE` or `~/.cache/segcompass`)."""
    force: bool = False
    """Retrain and replace an existing cache entry."""


def run_sam_warmup_command(cfg: SamWarmupCommandConfig) -> None:
    config = SamWarmupConfig(
        seed=cfg.seed, steps=cfg.steps, batch_images=cfg.batch_images, attribute_weight=cfg.attribute_weight,
        train_scenes=cfg.train_scenes, val_scenes=cfg.val_scenes,
    )  # fmt: skip
    art = tiny_sam(config, cfg.cache_dir or None, force=cfg.force)
    print(json.dumps({"checkpoint": str(art.checkpoint), "cached": art.cached, **art.evaluation}, indent=2))
