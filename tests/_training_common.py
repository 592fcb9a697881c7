"""Builders shared by the policy and training tests (not a test module)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from _head_common import make_sae

from segcompass.backbones import Backbone, build_tiny
from segcompass.evaluation.datasets import open_dataset
from segcompass.head import HeadConfig, LossConfig, SamEncoderConfig, build_head
from segcompass.policy import PolicyConfig
from segcompass.training import JointTrainConfig, SegCompassModel
from segcompass.world import WorldConfig, write_refcoco_style

K = 2
RESPONSE = "<think>the red one</think>" + "<REF_POS>" * K


def small_head_config(d_in: int, d_sae: int, **overrides: object) -> HeadConfig:
    """Tiny head at a reduced SAM geometry (256² input → 16² grid → 64² masks)."""
    enc = dataclasses.replace(SamEncoderConfig.tiny(), img_size=256)
    base = dict(num_slots=K, tau=0.05, sam_encoder=enc, heatmap_size=64,
                loss=LossConfig(switch_step=0, match_conf_weight=0.1, too_many_targets="drop"))  # fmt: skip
    return HeadConfig.tiny(d_in, d_sae, **{**base, **overrides})


def tiny_model(seed: int = 0, backbone: Backbone | None = None, **head_overrides: object) -> SegCompassModel:
    """Random tiny Qwen2.5-VL + random SAE (128 atoms) + tiny head with its own SAM image encoder."""
    bb = backbone or build_tiny("qwen2_5_vl", seed=seed)
    sae = make_sae(bb.hidden_size, 128, seed=seed, apply_b_dec_to_input=False)
    torch.manual_seed(seed)
    head = build_head(small_head_config(bb.hidden_size, 128, **head_overrides), sae, image_encoder=True)
    return SegCompassModel(bb, head, PolicyConfig(num_slots=K, max_new_tokens=12))


def world_data(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """A gRefCOCO-style synthetic-world data set (written once per root)."""
    if not (root / "instances.json").exists():
        write_refcoco_style(root, WorldConfig(), {"train": n_train, "val": n_val})
    return root


def open_world(root: Path, split: str):
    return open_dataset("grefcoco", root, split)


def tiny_train_config(out: Path, **overrides: object) -> JointTrainConfig:
    """2 prompts × G 2, short responses: a step takes about a second on one thread."""
    base = dict(out=str(out), steps=2, prompts_per_step=2, group_size=2, lr=1e-3, checkpoint_every=1,
                policy=PolicyConfig(num_slots=K, max_new_tokens=12))  # fmt: skip
    return JointTrainConfig(**{**base, **overrides})
