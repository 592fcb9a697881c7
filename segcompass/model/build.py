"""Building a fresh model: the head's presets (`cpu`, `paper`) and `build_model` (backbone + SAE + head)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from segcompass.backbones import emits_slots, resolve_backbone
from segcompass.head import HeadConfig, LossConfig, SamEncoderConfig, build_head
from segcompass.policy import PolicyConfig
from segcompass.sam_warmup import SamWarmupConfig, ensure_sam, resolve_sam
from segcompass.warmup import ensure_warm_backbone

from .core import SegCompassModel


def cpu_head_config(d_in: int, d_sae: int, num_slots: int, sam: SamWarmupConfig | None = None) -> HeadConfig:
    """The tiny head at a reduced SAM geometry (256² input → 16² grid → 64² masks) for CPU runs; the focal
    term from step 0, a small confidence weight in the matching (see tests/test_head_overfit.py) and a
    confidence that reads the slot's image evidence (`HeadConfig.conf_evidence`: the tiny backbone does not
    ground the referent, so a query-only confidence cannot see that it is absent; head_diagnosis.md §8).

    Args:
        num_slots: K, the policy's (`PolicyConfig.num_slots`).
        sam: take the SAM encoder / decoder shape of this tiny-SAM warm-up (default: the test-size tiny SAM).
    """
    loss = LossConfig(switch_step=0, match_conf_weight=0.1, too_many_targets="drop")
    if sam is not None:
        return HeadConfig.tiny(
            d_in, d_sae, num_slots=num_slots, sam_encoder=sam.encoder_config(),
            sam_decoder=sam.decoder_config(), heatmap_size=sam.mask_size, loss=loss, conf_evidence=True,
        )  # fmt: skip
    enc = dataclasses.replace(SamEncoderConfig.tiny(), img_size=256)
    return HeadConfig.tiny(
        d_in, d_sae, num_slots=num_slots, sam_encoder=enc, heatmap_size=64, loss=loss, conf_evidence=True
    )


def model_head_config(
    preset: str, d_in: int, d_sae: int, num_slots: int, sam: str
) -> tuple[HeadConfig, Path | None]:
    """The head's config and SAM checkpoint for a preset.

    ``cpu``: the tiny head of `cpu_head_config` with `sam` = "warm" (the tiny-SAM warm-up) or "" (random init).
    ``paper``: docs/design.md §4 (SAM ViT-H geometry, d_c 512, …) with `sam` = the path of a SAM ViT-H checkpoint
    (segment-anything `.pth` or `.safetensors`); "" leaves SAM random (only sensible for smoke tests).
    """
    if preset == "cpu":
        checkpoint, sam_cfg = resolve_sam(sam)
        if checkpoint is not None and sam_cfg is None:
            raise ValueError(
                "the cpu head takes --sam warm or --sam '' (a SAM checkpoint by path needs --head paper)"
            )
        return cpu_head_config(d_in, d_sae, num_slots, sam_cfg), checkpoint
    if preset == "paper":
        if sam in ("warm", "warm:tiny_sam"):
            raise ValueError("--head paper has SAM ViT-H geometry: pass --sam /path/to/sam_vit_h.pth (the tiny SAM "
                             "warm-up fits only --head cpu)")  # fmt: skip
        checkpoint = None
        if sam:
            checkpoint = Path(sam).expanduser()
            if not checkpoint.is_file():
                raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
        return HeadConfig.paper(d_in, d_sae=d_sae, num_slots=num_slots), checkpoint
    raise ValueError(f"unknown head preset {preset!r} (expected 'cpu' or 'paper')")


def build_missing_stages(
    backbone_spec: str, sam: str = "", *, policy: PolicyConfig | None = None, seed: int = 0
) -> None:
    """Build the cached stages `build_model(backbone_spec, …, policy, sam)` loads if they are missing — the
    warmed-up backbone of a `warm:` spec (emitting the policy's K `<REF_POS>`), the tiny SAM of `sam="warm"`
    — logging what it builds. `build_model` itself only loads (a missing stage raises `StageMissing` naming
    its command)."""
    ensure_warm_backbone(backbone_spec, seed=seed, num_slots=(policy or PolicyConfig()).num_slots)
    ensure_sam(sam, seed=seed)


def build_model(
    backbone_spec: str,
    sae_path: str | Path,
    seed: int,
    policy: PolicyConfig,
    sam: str = "warm",
    head: str = "cpu",
) -> SegCompassModel:
    """A fresh model: the backbone as loaded, the SAE, the head of preset `head` (`model_head_config`) with
    SAM weights per `sam`, the rest of the head initialised from `seed`."""
    from sae.saved import load_sae

    # K has one home, the policy: a `warm:` / `stack:` backbone is one taught to emit K <REF_POS> (`emits_slots`)
    taught_k = {"num_slots": policy.num_slots} if emits_slots(backbone_spec) else {}
    backbone = resolve_backbone(backbone_spec, **taught_k)
    sae, _ = load_sae(sae_path)
    head_cfg, checkpoint = model_head_config(head, backbone.hidden_size, sae.cfg.d_sae, policy.num_slots, sam)
    torch.manual_seed(seed)
    built = build_head(head_cfg, sae, image_encoder=True, sam_checkpoint=checkpoint)
    return SegCompassModel(backbone, built, policy)
