"""`segcompass warmup-sam`: build (or show) the cached tiny-SAM warm-up."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import tiny_sam
from .config import SamWarmupConfig
from .evaluate import evaluation_table


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
    point_fraction: float = SamWarmupConfig.point_fraction
    """Fraction of prompts that are point prompts (the rest dense mask prompts)."""
    refine_iters: int = SamWarmupConfig.refine_iters
    """SAM's iterative training: extra decoder passes per prompt (the previous logits as the mask prompt, a
    click on the previous error for point prompts)."""
    coarse_noise: float = SamWarmupConfig.coarse_noise
    """Std of the noise on the coarse dense training prompts' logits."""
    train_scenes: int = SamWarmupConfig.train_scenes
    """Training scenes."""
    val_scenes: int = SamWarmupConfig.val_scenes
    """Held-out scenes for the evaluation."""
    cache_dir: str = ""
    """Cache root; tiny SAMs live under its sam/ (default `$SEGCOMPASS_CACHE` or `~/.cache/segcompass`)."""
    force: bool = False
    """Retrain and replace an existing cache entry."""
    threads: int = 0
    """torch threads (0: torch's default; the build is deterministic for a seed on one thread count; with
    --reproduce, the count the committed SAM was built with)."""
    reproduce: str = ""
    """A committed tiny SAM's key (`checkpoints/MANIFEST.json`): rebuild it from the config its stage.json
    records, in a temporary cache, compare every tensor with the committed weights, print the verdict and exit
    with 1 when they differ. The flags that describe the SAM are ignored."""


def run_sam_warmup_command(cfg: SamWarmupCommandConfig) -> None:
    if cfg.reproduce:
        from segcompass.reproduce import print_reproduction

        from .cache import COMMITTABLE

        print_reproduction(cfg.reproduce, COMMITTABLE, cfg.threads)
        return
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    config = SamWarmupConfig(
        seed=cfg.seed, steps=cfg.steps, batch_images=cfg.batch_images, attribute_weight=cfg.attribute_weight,
        point_fraction=cfg.point_fraction, refine_iters=cfg.refine_iters, coarse_noise=cfg.coarse_noise,
        train_scenes=cfg.train_scenes, val_scenes=cfg.val_scenes,
    )  # fmt: skip
    art = tiny_sam(config, cfg.cache_dir or None, force=cfg.force)
    ev = art.evaluation
    wall = art.train_info.get("wall_s")
    print(
        f"tiny SAM: {art.checkpoint} ({'cached' if art.cached else 'built'}"
        + (f", trained in {wall:.0f} s" if wall is not None else "")
        + ")"
    )
    print(
        f"held-out mean IoU at {ev.get('eval_size', config.mask_size)}² over {ev['instances']} instances "
        f"of {ev.get('scenes', config.val_scenes)} val scenes:"
    )
    print(evaluation_table(ev).to_string(float_format="{:.3f}".format))
