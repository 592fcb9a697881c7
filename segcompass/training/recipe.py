"""The training ablation on the synthetic world, reproduced by one command (`segcompass ablation`):

    world (gRefCOCO-style train / val) → warmed-up tiny backbone → its SAE → for each objective (joint,
    RL only, seg only) × seed: train → evaluate greedily on held-out val → beside the trivial baselines
    (empty, union of all objects) and the untrained model → `ablation.csv` + `ablation.md`.

Every stage is cached under `out` (the world, the SAE, each run; runs resume from their checkpoints).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from segcompass.artifacts import activation_store, stage_key, trained_sae, world_corpus
from segcompass.backbones import resolve_backbone
from segcompass.evaluation import EvalConfig, evaluate
from segcompass.evaluation.baselines import EmptyPredictor, UnionOfObjectsPredictor
from segcompass.evaluation.datasets import open_dataset
from segcompass.head import HeadConfig, LossConfig, SamEncoderConfig, build_head
from segcompass.policy import PolicyConfig
from segcompass.world import WorldConfig, write_refcoco_style

from .config import JointTrainConfig
from .loop import train_joint
from .model import SegCompassModel
from .predictor import SegCompassPredictor

logger = logging.getLogger(__name__)


def _objectives() -> list[str]:
    return ["joint", "rl", "seg"]


def _seeds() -> list[int]:
    return [0, 1]


@dataclass
class AblationConfig:
    """Train every (objective, seed) arm on the synthetic world and compare them on held-out data."""

    out: str = "runs/ablation"
    """Folder for the data, the SAE, every run and the result tables."""
    backbone: str = "warm:qwen2_5_vl"
    """Policy backbone (`warm:<family>`: the warmed-up tiny backbone, cached)."""
    sae: str = ""
    """A trained SAE folder for the backbone's hook layer; empty: capture the world corpus and train one."""
    objectives: list[str] = field(default_factory=_objectives)
    """Arms: ``joint`` (pg + KL + seg + conf), ``rl`` (pg + KL), ``seg`` (seg + conf)."""
    seeds: list[int] = field(default_factory=_seeds)
    """Seeds of each arm (head init, data order, rollouts)."""
    train_samples: int = 400
    """World samples (train split) to train on."""
    val_samples: int = 100
    """Held-out world samples (val split) to evaluate on."""
    steps: int = 120
    """Optimiser steps per run."""
    prompts_per_step: int = 4
    """Prompts per step."""
    group_size: int = 4
    """G: sampled responses per prompt."""
    lr: float = 1e-4
    """Base learning rate (LLM blocks after the hook; the head's groups ×30/×25/×10/×5)."""
    max_new_tokens: int = 80
    """Longest response."""
    sae_documents: int = 400
    """Corpus documents the SAE is trained on (when `sae` is empty)."""
    world_seed: int = 0
    """Seed of the synthetic world."""
    threads: int = 1
    """torch threads."""
    results_md: str = ""
    """Also write the Markdown table here (e.g. results/training_ablation.md)."""


def _data(cfg: AblationConfig, out: Path) -> Path:
    world = WorldConfig(seed=cfg.world_seed)
    folder = out / "data" / f"refs-{stage_key(dataclasses.asdict(world), cfg.train_samples, cfg.val_samples)}"
    if not (folder / "instances.json").exists():
        write_refcoco_style(folder, world, {"train": cfg.train_samples, "val": cfg.val_samples})
    return folder


def _sae_path(cfg: AblationConfig, out: Path, backbone) -> Path:
    if cfg.sae:
        return Path(cfg.sae)
    corpus = world_corpus(out, WorldConfig(seed=cfg.world_seed), "train", cfg.sae_documents)
    name = cfg.backbone.replace(":", "-").replace("/", "_")
    store = activation_store(
        backbone, corpus, out / "activations" / f"{name}-{stage_key(cfg.backbone, corpus.name)}"
    )
    return trained_sae(store, out / "sae" / f"{name}-{stage_key(cfg.backbone, corpus.name, 'tiny', 3.0)}")


def cpu_head_config(d_in: int, d_sae: int, num_slots: int = 4) -> HeadConfig:
    """The tiny head at a reduced SAM geometry (256² input → 16² grid → 64² masks) for CPU runs; the focal
    term from step 0 and a small confidence weight in the matching (see tests/test_head_overfit.py)."""
    enc = dataclasses.replace(SamEncoderConfig.tiny(), img_size=256)
    loss = LossConfig(switch_step=0, match_conf_weight=0.1, too_many_targets="drop")
    return HeadConfig.tiny(d_in, d_sae, num_slots=num_slots, sam_encoder=enc, heatmap_size=64, loss=loss)


def build_model(backbone_spec: str, sae_path: str | Path, seed: int, policy: PolicyConfig) -> SegCompassModel:
    """A fresh model: the backbone as loaded, the SAE, a head initialised from `seed`."""
    from sae.training.metadata import load_sae

    backbone = resolve_backbone(backbone_spec)
    sae, _ = load_sae(sae_path)
    torch.manual_seed(seed)
    head = build_head(
        cpu_head_config(backbone.hidden_size, sae.cfg.d_sae, policy.num_slots), sae, image_encoder=True
    )
    return SegCompassModel(backbone, head, policy)


def _row(result, arm: str, seed: int | None, extra: dict) -> dict:
    row = {"arm": arm, "seed": seed, **extra}
    for conv, summary in result.summaries.items():
        row[f"gIoU ({conv})"] = summary.giou
        row[f"cIoU ({conv})"] = summary.ciou
        if conv == "rela":
            row["N-acc (rela)"], row["T-acc (rela)"] = summary.n_acc, summary.t_acc
    per = result.per_sample
    if "extra_format_reward" in per or "format_reward" in per:
        col = "format_reward" if "format_reward" in per else "extra_format_reward"
        row["format (greedy)"] = float(per[col].mean())
    return row


def run_ablation(cfg: AblationConfig) -> pd.DataFrame:
    """Run (or reuse) every arm and write `ablation.csv` / `ablation.md` under `out`; returns the table."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    data = _data(cfg, out)
    train_set, val_set = open_dataset("grefcoco", data, "train"), open_dataset("grefcoco", data, "val")
    sae_path = _sae_path(cfg, out, resolve_backbone(cfg.backbone))
    policy = PolicyConfig(max_new_tokens=cfg.max_new_tokens)
    ev = EvalConfig(progress=False, img_size=256, convention="both")
    rows = []
    for base in (EmptyPredictor(), UnionOfObjectsPredictor(val_set)):
        rows.append(_row(evaluate(base, val_set, ev), base.name, None, {}))
    for seed in cfg.seeds:
        untrained = build_model(cfg.backbone, sae_path, seed, policy)
        rows.append(_row(evaluate(SegCompassPredictor(untrained), val_set, ev), "untrained", seed, {}))
    for objective in cfg.objectives:
        for seed in cfg.seeds:
            model = build_model(cfg.backbone, sae_path, seed, policy)
            train_cfg = JointTrainConfig(
                out=str(out / "runs" / f"{objective}-seed{seed}"), objective=objective, steps=cfg.steps,
                prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size, lr=cfg.lr, seed=seed,
                checkpoint_every=max(1, cfg.steps // 4), policy=policy, threads=cfg.threads,
            )  # fmt: skip
            res = train_joint(
                train_cfg, model, train_set, context={"backbone": cfg.backbone, "sae": str(sae_path)}
            )
            h = res.history
            n = max(1, min(10, len(h) // 4))
            extra = {
                "train reward first": float(h["reward/total"].head(n).mean()),
                "train reward last": float(h["reward/total"].tail(n).mean()),
                "train format first": float(h["reward/format"].head(n).mean()),
                "train format last": float(h["reward/format"].tail(n).mean()),
            }
            rows.append(_row(evaluate(SegCompassPredictor(model), val_set, ev), objective, seed, extra))
    table = pd.DataFrame(rows)
    table.to_csv(out / "ablation.csv", index=False)
    md = ablation_markdown(table, cfg)
    (out / "ablation.md").write_text(md)
    if cfg.results_md:
        Path(cfg.results_md).write_text(md)
    return table


def ablation_markdown(table: pd.DataFrame, cfg: AblationConfig) -> str:
    """Mean ± sd over seeds per arm, then every run."""
    num = [c for c in table.columns if c not in ("arm", "seed")]
    grouped = table.groupby("arm", sort=False)[num]
    mean, sd = grouped.mean(), grouped.std()
    lines = ["| arm | n | " + " | ".join(num) + " |", "|---|---|" + "---|" * len(num)]
    for arm in mean.index:
        n = int(grouped.size()[arm])
        cells = [
            "" if pd.isna(mean.loc[arm, c]) else
            (f"{mean.loc[arm, c]:.3f}" + (f" ± {sd.loc[arm, c]:.3f}" if n > 1 and not pd.isna(sd.loc[arm, c]) else ""))
            for c in num
        ]  # fmt: skip
        lines.append(f"| {arm} | {n} | " + " | ".join(cells) + " |")
    head = (
        f"Synthetic world (seed {cfg.world_seed}): {cfg.train_samples} train / {cfg.val_samples} held-out val samples; "
        f"backbone {cfg.backbone}; {cfg.steps} steps × {cfg.prompts_per_step} prompts × G {cfg.group_size}, lr {cfg.lr}; "
        "greedy evaluation, one sample per sentence, masks scored in the image frame.\n\n"
    )
    return head + "\n".join(lines) + "\n"
