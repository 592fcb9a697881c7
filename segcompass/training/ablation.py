"""The training ablation on the synthetic world, reproduced by one command (`segcompass ablation`):

    world (gRefCOCO-style train / val / test / calib) → the tiny backbone → its SAE → for each objective
    (joint, RL only, seg only) × seed: train → thresholds chosen on calib → evaluate greedily on the two
    held-out splits (val, test) → beside the trivial baselines (empty, union of all objects) and the
    untrained model → `ablation.csv` + `ablation.md` (verdict, per-seed ordering, tables per split).

Every stage is cached under `out` (the world, the SAE, each run; runs resume from their checkpoints).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from segcompass.artifacts import activation_store, backbone_key, stage_key, trained_sae, world_corpus
from segcompass.artifacts.legacy import ablation_folders
from segcompass.backbones import DEFAULT_BACKBONE, emits_slots, resolve_backbone
from segcompass.evaluation import EvalConfig, evaluate
from segcompass.evaluation.baselines import EmptyPredictor, UnionOfObjectsPredictor
from segcompass.evaluation.datasets import open_dataset
from segcompass.evaluation.model_predictor import SegCompassPredictor
from segcompass.head import LR_MULTIPLIERS
from segcompass.model import SegCompassModel, build_missing_stages, build_model
from segcompass.policy import PolicyConfig
from segcompass.world import WorldConfig, write_refcoco_style

from .ablation_table import ablation_markdown, scored_rows, table_row
from .config import JointTrainConfig
from .head_warmup import HeadWarmupConfig, cached_warm_start
from .loop import train_joint

logger = logging.getLogger(__name__)


def _objectives() -> list[str]:
    return ["joint", "rl", "seg"]


def _seeds() -> list[int]:
    return [0, 1, 2]


def ablation_train_config() -> JointTrainConfig:
    """The arms' joint training: 60 steps × 4 prompts × G 4, lr 1e-4, one thread, 128-token responses.

    At 120 steps the joint arm's seeds spread further apart (previous table, 100 val samples: held-out gIoU
    0.300 / 0.243 vs 0.281 / 0.275 at 60; results/training_ablation.md). The world's reference responses are 62
    tokens at the median and 93 at the 90th percentile (relational ones 87 on average); at 80, 31 % of them —
    95 % of the relational ones — would be cut before their ``<REF_POS>`` tokens, leaving the head zero
    concentration states (2 % at 128).
    """
    return JointTrainConfig(
        steps=60, prompts_per_step=4, group_size=4, lr=1e-4, threads=1, head_loss_llm_grad=1.0,
        head_loss_responses="all", head_ema_decay=0.0, policy=PolicyConfig(max_new_tokens=128),
    )  # fmt: skip


@dataclass
class AblationConfig:
    """Train every (objective, seed) arm on the synthetic world and compare them on held-out data."""

    out: str = "runs/ablation"
    """Folder for the data, the SAE, every run and the result tables."""
    backbone: str = DEFAULT_BACKBONE
    """Policy backbone (`stack:<family>`: the staged tiny VLM, committed; `warm:<family>`: the earlier
    warm-up, which results/training_ablation.md measured)."""
    sae: str = ""
    """A trained SAE folder for the backbone's hook layer; empty: capture the world corpus and train one."""
    sam: str = "warm"
    """SAM weights of the head: "warm" (the cached tiny-SAM warm-up) or "" (random init)."""
    objectives: list[str] = field(default_factory=_objectives)
    """Arms: ``joint`` (pg + KL + seg + conf), ``rl`` (pg + KL), ``seg`` (seg + conf)."""
    seeds: list[int] = field(default_factory=_seeds)
    """Seeds of each arm (head init, data order, rollouts)."""
    train_samples: int = 2000
    """World samples (train split) to train on."""
    val_samples: int = 300
    """Held-out world samples (val split) to evaluate on (with 100 the differences between arms and to the
    union baseline were below the split's noise; results/training_ablation.md)."""
    test_samples: int = 300
    """Held-out world samples of a second split ("test", its own split seed) on which every model is scored
    too, at the thresholds chosen on calib (no model, threshold or variant choice sees it); 0: val only."""
    calibration_samples: int = 300
    """World samples of a third split ("calib") on which every model's mask / confidence thresholds are
    chosen (`calibrate_thresholds`) before it is scored on val (and test); 0: the 0.5 / 0.5 defaults
    only."""
    head_warmup_steps: int = 1200
    """Supervised warm start of the head on the policy's greedy responses before every arm (0: none); shared
    by the arms of a seed and reported as its own row (cosine lr, EMA of the weights: `HeadWarmupConfig`;
    results/head_diagnosis.md §6–7)."""
    head_warmup_lr: float = 2e-4
    """Base learning rate of the head warm start (its groups use the head's multipliers)."""
    head_warmup_samples: int = 2000
    """Training prompts the warm start decodes (once) and cycles through. With 400 the head memorises them
    (train gIoU 0.41 vs val 0.25) and its thresholds cannot be calibrated; 2000 keep train ≈ val
    (results/head_diagnosis.md §7)."""
    train: JointTrainConfig = field(default_factory=lambda: ablation_train_config())
    """The joint training of every arm (`JointTrainConfig`; each arm sets its own `out`, `objective`, `seed`
    and `checkpoint_every` = steps / 4, and scales the head's lr multipliers by `head_lr_scale`)."""
    head_lr_scale: float = 1.0
    """Scales the head's learning-rate multipliers in the arms (after its warm start), not the LLM's."""
    sae_documents: int = 400
    """Corpus documents the SAE is trained on (when `sae` is empty)."""
    world_seed: int = 0
    """Seed of the synthetic world."""
    results_md: str = ""
    """Also write the Markdown table here (e.g. results/training_ablation.md)."""


CALIBRATION_SPLIT_SEED = 3
"""World split seed of the ablation's "calib" split (train 0, val 1, test 2)."""


def _world(cfg: AblationConfig) -> WorldConfig:
    seeds = {**WorldConfig().split_seeds, "calib": CALIBRATION_SPLIT_SEED}
    return WorldConfig(seed=cfg.world_seed, split_seeds=seeds)


def _data(cfg: AblationConfig, out: Path) -> Path:
    world = _world(cfg)
    splits = {"train": cfg.train_samples, "val": cfg.val_samples}
    if cfg.calibration_samples > 0:
        splits["calib"] = cfg.calibration_samples
    folder = out / "data" / f"refs-{stage_key(dataclasses.asdict(world), splits)}"
    if not (folder / "instances.json").exists():
        write_refcoco_style(folder, world, splits)
    return folder


def _test_data(cfg: AblationConfig, out: Path) -> Path | None:
    """The second held-out split, in a folder of its own: adding it leaves the train / val / calib folder, and
    so every cached warm start and arm run keyed by it, as they were."""
    if cfg.test_samples <= 0:
        return None
    world, splits = _world(cfg), {"test": cfg.test_samples}
    folder = out / "data" / f"test-{stage_key(dataclasses.asdict(world), splits)}"
    if not (folder / "instances.json").exists():
        write_refcoco_style(folder, world, splits)
    return folder


def _sae_path(cfg: AblationConfig, out: Path, backbone) -> Path:
    if cfg.sae:
        return Path(cfg.sae)
    world = WorldConfig(seed=cfg.world_seed)
    corpus = world_corpus(out, world, "train", cfg.sae_documents)
    old = ablation_folders(out, world, cfg.backbone, backbone_key(cfg.backbone, backbone), cfg.sae_documents)
    store = activation_store(backbone, cfg.backbone, corpus, out, legacy=old["store"])
    return trained_sae(store, out, legacy=old["sae"])


def _warm_config(cfg: AblationConfig, seed: int) -> HeadWarmupConfig:
    return HeadWarmupConfig(
        steps=cfg.head_warmup_steps, samples=cfg.head_warmup_samples, lr=cfg.head_warmup_lr, seed=seed
    )


_SAMPLING_ONLY = ("temperature", "top_p")
"""Policy fields that only the sampled rollouts of the arms read, never the greedy warm start."""


def _start_key(cfg: AblationConfig, model: SegCompassModel, data: Path, sae_path: Path, seed: int) -> str:
    """Key of everything an arm starts from: backbone, SAE, SAM, head architecture, data, the policy's
    prompt and response settings (template, image order, response budget, the token types whose states enter
    the head, …), head warm start. (The head's config is part of it: a cached warm start is loaded with
    strict=False, so one of a different architecture would otherwise load silently with its new parts at
    random init.)"""
    warm = dataclasses.asdict(_warm_config(cfg, seed)) if cfg.head_warmup_steps > 0 else None
    policy = {k: v for k, v in dataclasses.asdict(cfg.train.policy).items() if k not in _SAMPLING_ONLY}
    return stage_key(
        backbone_key(cfg.backbone, model.backbone),
        str(sae_path),
        cfg.sam,
        dataclasses.asdict(model.head.cfg),
        data.name,
        warm,
        policy,
    )


def _warm_head(
    cfg: AblationConfig, out: Path, model: SegCompassModel, train_set, data: Path, sae_path: Path, seed: int
) -> dict:
    """Warm-start `model.head` in place (or load the cached result); returns its trainable state."""
    key = _start_key(cfg, model, data, sae_path, seed)
    return cached_warm_start(model, train_set, _warm_config(cfg, seed), out, f"seed{seed}-{key}")


def _head_multipliers(scale: float, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """The head's lr multipliers (the defaults, with the training config's `overrides`) × `scale` (the LLM's
    stays as it is)."""
    merged = {**LR_MULTIPLIERS, **(overrides or {})}
    return {k: v * (1.0 if k == "llm" else scale) for k, v in merged.items()}


def run_ablation(cfg: AblationConfig) -> pd.DataFrame:
    """Run (or reuse) every arm and write `ablation.csv` / `ablation.md` under `out`; returns the table."""
    torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.out)
    data = _data(cfg, out)
    train_set = open_dataset("grefcoco", data, "train")
    held_out = {"val": open_dataset("grefcoco", data, "val")}
    test_data = _test_data(cfg, out)
    if test_data is not None:
        held_out["test"] = open_dataset("grefcoco", test_data, "test")
    calib_set = open_dataset("grefcoco", data, "calib") if cfg.calibration_samples > 0 else None
    policy = cfg.train.policy  # K and the response budget: one home, the arms' training config
    build_missing_stages(cfg.backbone, cfg.sam, policy=policy)
    taught_k = {"num_slots": policy.num_slots} if emits_slots(cfg.backbone) else {}
    sae_path = _sae_path(cfg, out, resolve_backbone(cfg.backbone, **taught_k))
    ev = EvalConfig(progress=False, img_size=256, convention="both")
    rows = []
    for split, dataset in held_out.items():
        for base in (EmptyPredictor(), UnionOfObjectsPredictor(dataset)):
            rows.append(table_row(evaluate(base, dataset, ev), base.name, None, {"split": split}))

    def scored(model: SegCompassModel, arm: str, seed: int, extra: dict | None = None) -> list[dict]:
        return scored_rows(SegCompassPredictor(model), held_out, calib_set, ev, arm, seed, extra or {})

    starts = {}
    for seed in cfg.seeds:
        untrained = build_model(cfg.backbone, sae_path, seed, policy, cfg.sam)
        rows += scored(untrained, "untrained", seed)
        if cfg.head_warmup_steps > 0:
            starts[seed] = _warm_head(cfg, out, untrained, train_set, data, sae_path, seed)
            rows += scored(untrained, "head warm start", seed)
    for objective in cfg.objectives:
        for seed in cfg.seeds:
            model = build_model(cfg.backbone, sae_path, seed, policy, cfg.sam)
            if seed in starts:
                model.head.load_state_dict(starts[seed], strict=False)
            # The run folder is keyed by its starting point, so a changed warm start or backbone never
            # resumes (and silently reuses) a finished run of the old one.
            start = _start_key(cfg, model, data, sae_path, seed)
            train_cfg = dataclasses.replace(
                cfg.train, out=str(out / "runs" / f"{objective}-seed{seed}-{start}"), objective=objective,
                seed=seed, checkpoint_every=max(1, cfg.train.steps // 4),
                lr_multipliers=_head_multipliers(cfg.head_lr_scale, cfg.train.lr_multipliers),
            )  # fmt: skip
            res = train_joint(
                train_cfg,
                model,
                train_set,
                context={"backbone": cfg.backbone, "sae": str(sae_path), "start": start},
            )
            h = res.history
            n = max(1, min(10, len(h) // 4))
            extra = {
                "train reward first": float(h["reward/total"].head(n).mean()),
                "train reward last": float(h["reward/total"].tail(n).mean()),
                "train format first": float(h["reward/format"].head(n).mean()),
                "train format last": float(h["reward/format"].tail(n).mean()),
            }
            rows += scored(model, objective, seed, extra)
    table = pd.DataFrame(rows)
    table.to_csv(out / "ablation.csv", index=False)
    md = ablation_markdown(table, cfg)
    (out / "ablation.md").write_text(md)
    if cfg.results_md:
        Path(cfg.results_md).write_text(md)
    return table
