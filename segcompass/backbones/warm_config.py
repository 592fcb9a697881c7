"""Configuration of the tiny-backbone warm-up and the cache key derived from it. It lives with the backbones
because `resolve_backbone("warm:…")` looks the warmed backbone up by it; the training is `segcompass.warmup`."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from segcompass.world.config import WorldConfig

from .family import TinySpec

WARMUP_VERSION = 2
"""Bumped whenever task construction or the training loop changes what a config produces; part of the
cache key, so old cached backbones are never mistaken for new ones."""

TASKS: tuple[str, ...] = ("describe", "qa", "format")
"""Warm-up tasks: scene description, attribute questions, the SegCompass output format."""


def _default_task_weights() -> dict[str, float]:
    return {"describe": 0.15, "qa": 0.35, "format": 0.5}


@dataclass
class WarmupConfig:
    """Everything that decides what the warm-up produces; its JSON (plus `WARMUP_VERSION`) is the cache key.

    The defaults are the cached default backbone (`warm:qwen2_5_vl`): a few minutes on 2 CPU cores.
    """

    family: str = "qwen2_5_vl"
    """Backbone family of the tiny preset (`qwen2_5_vl` or `llava`)."""
    seed: int = 0
    """Seeds the random init, the per-step tasks, the questions and the batch order (the scenes are the
    world's: samples 0 … n − 1 of its "train" and "val" splits)."""
    tiny: dict[str, Any] = field(default_factory=dict)
    """Overrides of `TinySpec` fields (e.g. {"num_layers": 2}); the rest keep the preset's values."""
    num_slots: int = 4
    """K: `<REF_POS>` tokens after `</think>` in the output-format task (docs/design.md §4, decisions)."""
    steps: int = 500
    """Optimiser steps."""
    batch_size: int = 32
    """Examples per step (all of one task, so padding stays small)."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_fraction: float = 0.05
    """Fraction of the steps with a linear learning-rate warm-up from 0."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """Decay after the warm-up, down to `min_lr_fraction` × `lr`."""
    min_lr_fraction: float = 0.1
    """Final learning rate as a fraction of `lr`."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    bf16: bool = False
    """bf16 autocast for forward and backward (measured slower for training here; see results/warmup.md)."""
    task_weights: dict[str, float] = field(default_factory=_default_task_weights)
    """Probability that a step's batch is of each task (`describe`, `qa`, `format`)."""
    referent_weight: float = 1.0
    """Weight of the referent objective on format batches (`referent.py`: a linear probe of each
    `<REF_POS>` state predicts the instruction's target descriptor words; the probe is discarded). 0: off."""
    restate_target: bool = True
    """End the format task's reasoning with "Looking for {the instruction's referring expression}." (v2);
    False reproduces warm-up v1's format responses (the world's reasoning as is)."""
    train_scenes: int = 1000
    """Scenes generated for training (each yields fresh questions every time it is drawn)."""
    val_scenes: int = 100
    """Held-out scenes (world split "val") for evaluation: one question of each type per scene."""
    format_eval: int = 24
    """Held-out instructions whose greedy output is checked for the format."""
    max_new_tokens: int = 200
    """Greedy generation length limit in the format check."""
    world: dict[str, Any] = field(default_factory=dict)
    """Overrides of `WorldConfig` fields (default: the default world that analyses use)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"need steps >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if self.num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {self.num_slots}")
        if self.lr <= 0 or not 0 <= self.warmup_fraction < 1 or not 0 <= self.min_lr_fraction <= 1:
            raise ValueError("need lr > 0, 0 <= warmup_fraction < 1 and 0 <= min_lr_fraction <= 1")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        unknown = set(self.task_weights) - set(TASKS)
        if unknown or not any(w > 0 for w in self.task_weights.values()):
            raise ValueError(f"task_weights needs positive weights over {TASKS}, got {self.task_weights}")
        if not (self.referent_weight >= 0 and math.isfinite(self.referent_weight)):
            raise ValueError(f"referent_weight must be a finite number >= 0, got {self.referent_weight}")
        if self.train_scenes < 1 or self.val_scenes < 1:
            raise ValueError("train_scenes and val_scenes must be >= 1")
        bad = set(self.tiny) - {f.name for f in fields(TinySpec)}
        if bad:
            raise ValueError(f"unknown TinySpec fields in tiny: {sorted(bad)}")
        self.world_config()  # validates the overrides

    def tiny_spec(self) -> TinySpec:
        """The preset's `TinySpec` with `tiny` applied."""
        return TinySpec(**self.tiny)

    def world_config(self) -> WorldConfig:
        """The world the tasks are drawn from."""
        return WorldConfig(**self.world)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), with `warmup_version`."""
        return json.dumps({"warmup_version": WARMUP_VERSION, **asdict(self)}, sort_keys=True, indent=2)

    def key(self) -> str:
        """Cache key: `<family>-<first 16 hex of sha256(to_json())>`."""
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
        return f"{self.family}-{digest}"

    @classmethod
    def from_json(cls, text: str) -> WarmupConfig:
        """Inverse of `to_json` (the version entry is dropped; a v1 config gets `restate_target=False`)."""
        data = json.loads(text)
        version = data.pop("warmup_version", WARMUP_VERSION)
        if version < 2:
            data.setdefault("restate_target", False)
            data.setdefault("referent_weight", 0.0)
        return cls(**data)
