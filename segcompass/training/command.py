"""`segcompass train` and `segcompass ablation`: the command-line faces of `train_joint` and `run_ablation`."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

from segcompass.artifacts import backbone_key, stage_key
from segcompass.backbones import DEFAULT_BACKBONE
from segcompass.model import build_missing_stages, build_model

from .ablation import AblationConfig, run_ablation
from .config import JointTrainConfig
from .head_warmup import HeadWarmupConfig, cached_warm_start

logger = logging.getLogger(__name__)


@dataclass
class TrainCommandConfig(JointTrainConfig):
    """Train the SegCompass model (GRPO on the policy + head supervision) on a registered data set."""

    data: str = "grefcoco"
    """Registered data set name (`segcompass.data.available_datasets()`; the synthetic world is written in the
    gRefCOCO layout by `segcompass.world.write_refcoco_style`)."""
    data_root: str = ""
    """Folder of the data set in its usual layout (see `segcompass evaluate --help`)."""
    split: str = "train"
    """Split to train on."""
    backbone: str = DEFAULT_BACKBONE
    """Policy backbone: `stack:<family>` (the staged tiny VLM, committed), `warm:<family>`, `tiny:<family>`, a
    local checkpoint folder or a hub id."""
    sae: str = ""
    """Trained SAE folder (sae-lens format) for the backbone's hook layer."""
    head: str = "cpu"
    """Head preset: ``cpu`` (tiny head, SAM 256² geometry, for the tiny backbones) or ``paper`` (docs/design.md §4,
    SAM ViT-H geometry, for real backbones)."""
    sam: str = "warm"
    """SAM weights: with ``--head cpu`` "warm" (the cached tiny-SAM warm-up, built on first use) or "" (random
    init); with ``--head paper`` the path of a SAM ViT-H checkpoint."""
    head_warmup_steps: int = 0
    """Head warm start before joint training (`HeadWarmupConfig`: the policy decodes the training prompts
    once, the head alone trains on their states and fits the e_k standardisation); 0: none. The ablation uses
    1200 steps on 2000 prompts on the synthetic world. Cached under `<out>/head_warmup/`, so a resumed run does not redo it."""
    head_warmup_lr: float = 2e-4
    """Base learning rate of the head warm start."""
    head_warmup_samples: int = 400
    """Training prompts the head warm start decodes and cycles through."""


def run_train_command(cfg: TrainCommandConfig) -> None:
    from segcompass.evaluation.datasets import open_dataset

    from .loop import train_joint

    if not cfg.data_root or not cfg.sae:
        raise ValueError("--data-root and --sae are required (segcompass ablation builds both for the world)")
    dataset = open_dataset(cfg.data, cfg.data_root, cfg.split)
    build_missing_stages(cfg.backbone, cfg.sam if cfg.head == "cpu" else "", policy=cfg.policy)
    model = build_model(cfg.backbone, cfg.sae, cfg.seed, cfg.policy, cfg.sam, cfg.head)
    if cfg.head_warmup_steps > 0:
        warm = HeadWarmupConfig(
            steps=cfg.head_warmup_steps, samples=cfg.head_warmup_samples, lr=cfg.head_warmup_lr, seed=cfg.seed
        )
        key = stage_key(
            backbone_key(cfg.backbone, model.backbone), cfg.sae, cfg.sam, cfg.head, cfg.data, cfg.data_root,
            cfg.split, dataclasses.asdict(warm), dataclasses.asdict(cfg.policy),
        )  # fmt: skip
        cached_warm_start(model, dataset, warm, cfg.out, key)
    result = train_joint(
        cfg,
        model,
        dataset,
        context={"backbone": cfg.backbone, "sae": cfg.sae, "sam": cfg.sam, "head": cfg.head},
    )
    last = result.history.tail(10).mean(numeric_only=True)
    print(json.dumps({k: round(float(last[k]), 4) for k in ("reward/total", "reward/format", "loss/seg")}))
    print(f"final model: {result.final}")


def run_ablation_command(cfg: AblationConfig) -> None:
    table = run_ablation(cfg)
    print(table.to_string(index=False))
    print(f"tables: {cfg.out}/ablation.csv, {cfg.out}/ablation.md")
