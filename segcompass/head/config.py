"""Typed configuration of the SegCompass head (docs/design.md §4 defaults).

Every field carries its meaning in the docstring under it; presets are class methods
(`HeadConfig.paper(d_in, num_slots=K)`, `HeadConfig.tiny(d_in, d_sae, num_slots=K)`). K has no default here:
its one home is the policy (`PolicyConfig.num_slots`), which `segcompass.model.build_model` passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

TooManyTargets = Literal["error", "drop"]
ConcentrationMode = Literal["per_slot", "broadcast", "zero_pad"]


@dataclass(frozen=True)
class SamEncoderConfig:
    """SAM ViT image encoder shape (segment-anything `ImageEncoderViT`)."""

    embed_dim: int = 1280
    """ViT width (ViT-H: 1280)."""
    depth: int = 32
    """Number of ViT blocks (ViT-H: 32)."""
    num_heads: int = 16
    """Attention heads per block."""
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    """Blocks that use global instead of windowed attention."""
    img_size: int = 1024
    """Side of the (padded, square) input image in pixels."""
    patch_size: int = 16
    """Patch size; the embedding grid is img_size / patch_size (64 for SAM)."""
    window_size: int = 14
    """Window size of the windowed-attention blocks."""
    out_chans: int = 256
    """Channels of the image embedding (256 for SAM; the prompt encoder/decoder expect it)."""

    @classmethod
    def vit_h(cls) -> SamEncoderConfig:
        """SAM ViT-H, as segment-anything's `build_sam_vit_h`."""
        return cls()

    @classmethod
    def tiny(cls) -> SamEncoderConfig:
        """A one-block, 32-wide ViT with the same 1024² → 256×64×64 geometry, for tests."""
        return cls(embed_dim=32, depth=1, num_heads=2, global_attn_indexes=(0,), window_size=8)

    @property
    def grid_size(self) -> int:
        """Side of the image-embedding grid (64 for SAM)."""
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class SamDecoderConfig:
    """SAM prompt encoder + two-way mask decoder shape (segment-anything defaults)."""

    mask_in_chans: int = 16
    """Hidden channels of the prompt encoder's dense-mask downscaler."""
    transformer_depth: int = 2
    """Two-way transformer depth."""
    transformer_mlp_dim: int = 2048
    """Two-way transformer MLP width."""
    transformer_heads: int = 8
    """Two-way transformer attention heads."""
    iou_head_depth: int = 3
    """Depth of SAM's IoU head (kept for checkpoint compatibility; unused in the loss)."""
    iou_head_hidden_dim: int = 256
    """Width of SAM's IoU head."""

    @classmethod
    def tiny(cls) -> SamDecoderConfig:
        """A one-layer, narrow two-way transformer for tests (embedding width stays 256)."""
        return cls(transformer_depth=1, transformer_mlp_dim=64, transformer_heads=2, iou_head_hidden_dim=32)


@dataclass(frozen=True)
class LossConfig:
    """Segmentation and confidence losses, matching and the coefficient schedule."""

    dice_coef_before: float = 0.8
    """c_d before the switch step."""
    focal_coef_before: float = 0.0
    """c_f before the switch step."""
    dice_coef_after: float = 2.0
    """c_d from the switch step on."""
    focal_coef_after: float = 5.0
    """c_f from the switch step on."""
    switch_step: int = 1000
    """Optimisation step at which (c_d, c_f) switch from the 'before' to the 'after' values."""
    seg_weight: float = 0.3
    """Weight of L_seg in the head's total loss (docs/design.md §4: pg + 0.2·KL + 0.3·L_seg + 0.2·L_conf)."""
    conf_weight: float = 0.2
    """Weight of L_conf in the head's total loss."""
    focal_alpha: float = 0.25
    """Focal loss alpha (positive-class weight); a negative value disables alpha weighting."""
    focal_gamma: float = 2.0
    """Focal loss gamma."""
    dice_smooth: float = 1.0
    """Additive smoothing of the Dice ratio: 1 − (2·Σpg + s) / (Σp + Σg + s)."""
    match_iou_weight: float = 1.0
    """Matching cost weight of (1 − soft IoU)."""
    match_conf_weight: float = 0.0
    """Matching cost weight of −sigmoid(confidence) (0: IoU only, as the reference code)."""
    too_many_targets: TooManyTargets = "error"
    """More GT instances than slots: 'error' raises, 'drop' keeps the first K and counts the rest."""

    def coefficients(self, step: int) -> tuple[float, float]:
        """(c_d, c_f) at optimisation step `step`."""
        if step >= self.switch_step:
            return self.dice_coef_after, self.focal_coef_after
        return self.dice_coef_before, self.focal_coef_before


@dataclass(frozen=True)
class HeadConfig:
    """The whole SegCompass head (docs/design.md §3–4)."""

    d_in: int
    """LLM hidden size D: width of the hook-layer states (= SAE d_in) and of the concentration states."""
    d_sae: int = 0
    """SAE dictionary size (rows of the query codebook). 0: the SAE's, filled in when the head is built (the
    width has one home, the SAE; a non-zero value is checked against it)."""
    d_c: int = 512
    """Codebook / aggregator width."""
    num_slots: int = field(kw_only=True)
    """K_s: number of slots (and of concentration tokens in 'per_slot' mode). Required, no default: K has one
    home, the policy (`PolicyConfig.num_slots`); `build_model` passes it, and a head built on its own is given
    the K of the policy that will emit its concentration tokens."""
    tau: float = 2.0
    """Active-atom threshold: an SAE entry enters the support when |h| ≥ tau."""
    top_n: int | None = None
    """Optional per-token cap: keep at most this many largest-|h| atoms per token (None: no cap)."""
    encode_chunk_tokens: int = 128
    """Tokens per SAE-encoder chunk: bounds the dense temporaries to chunk × d_sae."""
    codebook_sparse_grad: bool = False
    """Give the codebook a sparse (per-entry rows) gradient; `build_optimizer` densifies it for AdamW. Pays
    off only when few atoms are used (E · d_c ≪ d_sae · d_c); at T≈1000 × 100 atoms/token on d_sae 65536 the
    dense-gradient embedding-bag is faster and smaller (bench/README.md)."""
    aggregator_layers: int = 2
    """Pre-norm transformer encoder layers of the aggregator."""
    aggregator_heads: int = 8
    """Attention heads of the aggregator."""
    aggregator_ff: int = 2048
    """Feed-forward width of the aggregator (GELU)."""
    aggregator_dropout: float = 0.0
    """Dropout inside the aggregator."""
    record_attention: bool = True
    """Record the slots' attention over concept tokens for provenance (forces the non-fused path)."""
    concentration_mode: ConcentrationMode = "per_slot"
    """'per_slot': K concentration states per sample; 'broadcast': one state given to every slot;
    'zero_pad': the last ≤K states, zero-padded to K (the reference code's single-token mode)."""
    mapper_heads: int = 4
    """Slot-mapper attention heads."""
    mapper_head_dim: int = 64
    """Slot-mapper head width (query Linear(D → heads·head_dim))."""
    mapper_fuser_channels: int = 16
    """Hidden channels of the conv fuser that merges the per-head 64² logits."""
    heatmap_size: int = 256
    """Side of the heatmap logits (the SAM dense-mask prompt size, 4 × the embedding grid)."""
    conf_hidden: int = 256
    """Hidden width of the confidence MLP."""
    conf_evidence: bool = False
    """Give the confidence MLP the slot's image evidence as well as its query (attention-pooled SAM
    embedding + peak logit; `SlotMapper`). False: the paper's query-only confidence. The CPU preset turns it
    on: the tiny backbone does not ground the referent, so a query-only confidence cannot see that the
    named object is absent."""
    conf_threshold: float = 0.5
    """A slot is confident when sigmoid(confidence logit) ≥ this (docs/design.md §4, decisions)."""
    sam_encoder: SamEncoderConfig = field(default_factory=SamEncoderConfig)
    """SAM image encoder shape (only used when the head embeds images itself)."""
    sam_decoder: SamDecoderConfig = field(default_factory=SamDecoderConfig)
    """SAM prompt encoder + mask decoder shape."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Losses, matching and coefficient schedule."""

    def __post_init__(self) -> None:
        if self.d_c % self.aggregator_heads:
            raise ValueError(f"d_c={self.d_c} must be divisible by aggregator_heads={self.aggregator_heads}")
        if self.num_slots < 1:
            raise ValueError(f"num_slots must be ≥ 1, got {self.num_slots}")
        if self.d_sae < 0:
            raise ValueError(f"d_sae must be ≥ 0 (0: the SAE's), got {self.d_sae}")
        if self.top_n is not None and self.top_n < 1:
            raise ValueError(f"top_n must be ≥ 1 or None, got {self.top_n}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0 (the support needs |h| ≥ tau > 0), got {self.tau}")
        if self.heatmap_size != 4 * self.sam_encoder.grid_size:
            raise ValueError(
                f"heatmap_size={self.heatmap_size} must be 4 × the SAM embedding grid "
                f"({self.sam_encoder.grid_size}) to be used as SAM's dense mask prompt"
            )

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """Expected image-embedding shape per image: (256, 64, 64) for SAM."""
        g = self.sam_encoder.grid_size
        return (self.sam_encoder.out_chans, g, g)

    @classmethod
    def paper(cls, d_in: int, *, num_slots: int, **overrides: object) -> HeadConfig:
        """docs/design.md §4 defaults for a backbone of hidden size `d_in` (SAM ViT-H) and the policy's K."""
        return replace(cls(d_in=d_in, num_slots=num_slots), **overrides)  # type: ignore[arg-type]

    @classmethod
    def tiny(cls, d_in: int, d_sae: int = 0, *, num_slots: int, **overrides: object) -> HeadConfig:
        """Small widths and tiny SAM parts for CPU tests; same geometry as the paper head."""
        base = cls(
            d_in=d_in,
            d_sae=d_sae,
            d_c=32,
            num_slots=num_slots,
            tau=0.5,
            aggregator_layers=1,
            aggregator_heads=2,
            aggregator_ff=64,
            mapper_heads=2,
            mapper_head_dim=16,
            mapper_fuser_channels=8,
            conf_hidden=32,
            sam_encoder=SamEncoderConfig.tiny(),
            sam_decoder=SamDecoderConfig.tiny(),
        )
        return replace(base, **overrides)  # type: ignore[arg-type]
