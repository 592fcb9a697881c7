"""Configuration of the tiny-SAM warm-up (class-agnostic promptable segmentation on the world) and its
cache key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from segcompass.head.config import SamDecoderConfig, SamEncoderConfig
from segcompass.world.config import WorldConfig

SAM_WARMUP_VERSION = 3
"""Bumped whenever data, prompts or the loop change what a config produces (part of the cache key).
2: point prompts, the loss on masks upsampled to `loss_size`, evaluation at `eval_size`.
3: SAM's iterative training (`refine_iters` 1), noise-free coarse prompts, a quarter of the dense prompts
blobs, no attribute classifier."""


def _default_encoder() -> dict[str, Any]:
    return {
        "embed_dim": 96,
        "depth": 3,
        "num_heads": 3,
        "global_attn_indexes": [2],
        "img_size": 256,
        "patch_size": 16,
        "window_size": 8,
    }


def _default_decoder() -> dict[str, Any]:
    return {
        "transformer_depth": 2,
        "transformer_mlp_dim": 256,
        "transformer_heads": 4,
        "iou_head_hidden_dim": 64,
    }


@dataclass
class SamWarmupConfig:
    """Everything that decides the warmed-up tiny SAM; its JSON (plus `SAM_WARMUP_VERSION`) is the cache key.

    The real SAM brings objectness from SA-1B; the tiny stand-in learns it on the synthetic world with
    SAM's own objective (a prompt → the instance's mask, class-agnostic). Prompts are SAM's point prompts
    (a positive point, sometimes negatives) and dense mask prompts: what the SegCompass head feeds the
    decoder (its slot heatmaps).
    """

    seed: int = 0
    """Seeds the random init, the prompts and the batch order (scenes are the world's train/val samples)."""
    encoder: dict[str, Any] = field(default_factory=_default_encoder)
    """`SamEncoderConfig` fields (the rest keep the class defaults; `out_chans` stays 256)."""
    decoder: dict[str, Any] = field(default_factory=_default_decoder)
    """`SamDecoderConfig` fields (the rest keep the class defaults)."""
    steps: int = 3000
    """Optimiser steps. 3000: the point prompt 0.615 → 0.735 and the heatmap 0.867 → 0.896 over 1000 at
    128² (results/tiny_sam.md, session (6)); ≈ 1.5 h of one core, so the default is committed with the code
    (`checkpoints/`) and a fresh clone copies it in."""
    batch_images: int = 8
    """Images per step."""
    prompts_per_image: int = 4
    """Instances prompted per image and step (drawn with replacement when an image has fewer)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up over 5 % of the steps, cosine to 10 %)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    focal_weight: float = 20.0
    """Weight of the focal term (SAM: 20 focal : 1 dice)."""
    attribute_weight: float = 0.0
    """Weight of the auxiliary per-patch colour / shape classification (0: SAM's objective alone)."""
    point_fraction: float = 0.5
    """Fraction of prompts that are point prompts; the rest are dense mask prompts."""
    negative_prob: float = 0.5
    """Probability that a point prompt also has negative points (on other instances or nearby background)."""
    max_negatives: int = 2
    """Most negative points of a point prompt (1 … this many when it has any)."""
    blob_fraction: float = 0.25
    """Fraction of the dense prompts that are a Gaussian blob inside the instance; the rest are coarse masks."""
    coarse_noise: float = 0.0
    """Std of the Gaussian noise added to the coarse dense prompts' logits (±6 scale; the evaluation's coarse
    heatmap has none)."""
    refine_iters: int = 1
    """SAM's iterative training: extra decoder passes per prompt, each taking the previous pass's low-res
    logits (detached) as the dense mask prompt; point prompts also get one click on the previous pass's error
    (`points.error_clicks`); the loss is the mean over all passes. 0: one pass."""
    tie_qk_init: bool = True
    """Initialise the decoder's token↔image cross-attention keys as its queries (`train.tie_cross_attention_qk`),
    so point prompts localise from the first step; False: segment-anything's independent init."""
    loss_size: int = 128
    """Side at which the loss is taken: the low-res mask logits upsampled bilinearly (SAM's postprocess) vs
    the instance's mask at this side (`mask_size`: no upsampling, or `eval_size`)."""
    eval_size: int = 128
    """Side of the predicted (upsampled) and ground-truth masks in the held-out evaluation."""
    train_scenes: int = 1000
    """Training scenes (world split "train", samples 0 … n − 1)."""
    val_scenes: int = 100
    """Held-out scenes (world split "val") for the evaluation."""
    world: dict[str, Any] = field(default_factory=dict)
    """Overrides of `WorldConfig` fields."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_images < 1 or self.prompts_per_image < 1:
            raise ValueError("need steps >= 0, batch_images >= 1 and prompts_per_image >= 1")
        for name in ("point_fraction", "negative_prob", "blob_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.coarse_noise < 0 or self.refine_iters < 0:
            raise ValueError("coarse_noise and refine_iters must be >= 0")
        if self.max_negatives < 1:
            raise ValueError(f"max_negatives must be >= 1, got {self.max_negatives}")
        if self.train_scenes < 1 or self.val_scenes < 1:
            raise ValueError("train_scenes and val_scenes must be >= 1")
        enc = self.encoder_config()
        if enc.img_size % enc.patch_size:
            raise ValueError(f"img_size {enc.img_size} must be a multiple of patch_size {enc.patch_size}")
        self.decoder_config()
        self.world_config()
        if self.eval_size % self.mask_size:
            raise ValueError(f"eval_size {self.eval_size} must be a multiple of mask_size {self.mask_size}")
        if self.loss_size not in (self.mask_size, self.eval_size):
            raise ValueError(
                f"loss_size must be mask_size ({self.mask_size}) or eval_size ({self.eval_size})"
            )

    def encoder_config(self) -> SamEncoderConfig:
        """The image encoder's shape."""
        kw = dict(self.encoder)
        if "global_attn_indexes" in kw:
            kw["global_attn_indexes"] = tuple(kw["global_attn_indexes"])
        try:
            return replace(SamEncoderConfig(), **kw)
        except TypeError as e:
            raise ValueError(f"bad encoder fields {sorted(kw)}: {e}") from None

    def decoder_config(self) -> SamDecoderConfig:
        """The prompt encoder + mask decoder's shape."""
        try:
            return replace(SamDecoderConfig(), **self.decoder)
        except TypeError as e:
            raise ValueError(f"bad decoder fields {sorted(self.decoder)}: {e}") from None

    def world_config(self) -> WorldConfig:
        """The world the scenes come from."""
        return WorldConfig(**self.world)

    @property
    def mask_size(self) -> int:
        """Side of the predicted masks and of the dense prompts (4 × the embedding grid)."""
        return 4 * self.encoder_config().grid_size

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) with `sam_warmup_version`."""
        return json.dumps(
            {"sam_warmup_version": SAM_WARMUP_VERSION, **asdict(self)}, sort_keys=True, indent=2
        )

    def key(self) -> str:
        """Cache key `tiny_sam-<first 16 hex of sha256(to_json())>`."""
        return "tiny_sam-" + hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str) -> SamWarmupConfig:
        """Inverse of `to_json`."""
        data = json.loads(text)
        data.pop("sam_warmup_version", None)
        return cls(**data)
