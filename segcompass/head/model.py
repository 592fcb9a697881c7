"""`SegCompassHead`: concept interface → codebook → aggregator → fusion → slot mapper → SAM mask decoder."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .aggregator import Aggregator
from .codebook import QueryCodebook
from .concepts import ConceptInterface, check_sae
from .config import HeadConfig
from .fusion import SlotFusion
from .image_encoder import ImageEmbeddingCache, build_sam_image_encoder, load_sam_checkpoint
from .losses import head_losses, prepare_targets
from .mask_decoder import SamMaskHead
from .matching import match_slots
from .outputs import HeadOutput, Provenance
from .slot_mapper import SlotMapper
from .support import ConceptSupport

logger = logging.getLogger(__name__)


class SegCompassHead(nn.Module):
    """The SegCompass head (docs/design.md §3). Build it with `build_head`.

    Submodules: `concepts` (frozen SAE), `codebook`, `aggregator`, `fusion`, `slot_mapper`, `mask_head`
    (`.prompt_encoder`, `.mask_decoder`) and optionally a frozen `image_encoder`.
    """

    def __init__(self, cfg: HeadConfig, sae: nn.Module, image_encoder: nn.Module | None = None):
        super().__init__()
        d_in, d_sae = check_sae(sae)
        if cfg.d_sae == 0:  # the SAE's width (its one home)
            cfg = dataclasses.replace(cfg, d_sae=d_sae)
        if d_in != cfg.d_in or d_sae != cfg.d_sae:
            raise ValueError(
                f"SAE shape (d_in={d_in}, d_sae={d_sae}) does not match HeadConfig (d_in={cfg.d_in}, d_sae={cfg.d_sae})"
            )
        self.cfg = cfg
        enc = cfg.sam_encoder
        self.concepts = ConceptInterface(sae, cfg.tau, cfg.top_n, cfg.encode_chunk_tokens)
        self.codebook = QueryCodebook(cfg.d_sae, cfg.d_c, cfg.codebook_sparse_grad)
        self.aggregator = Aggregator(
            cfg.d_c,
            cfg.num_slots,
            cfg.aggregator_layers,
            cfg.aggregator_heads,
            cfg.aggregator_ff,
            cfg.aggregator_dropout,
        )
        self.fusion = SlotFusion(cfg.d_in, cfg.d_c)
        self.slot_mapper = SlotMapper(
            cfg.d_in,
            enc.out_chans,
            cfg.mapper_heads,
            cfg.mapper_head_dim,
            cfg.mapper_fuser_channels,
            cfg.heatmap_size,
            cfg.conf_hidden,
            cfg.conf_evidence,
        )
        self.mask_head = SamMaskHead(cfg.sam_decoder, enc.out_chans, enc.grid_size, enc.img_size)
        self.image_encoder = image_encoder
        if image_encoder is not None:
            image_encoder.requires_grad_(False)

    # ------------------------------------------------------------------ inputs
    def _slot_states(self, concentration_states: Tensor, batch: int) -> Tensor:
        """Concentration states → [B, K, D] per the concentration mode."""
        k, d = self.cfg.num_slots, self.cfg.d_in
        c = concentration_states
        if c.ndim != 3 or c.shape[0] != batch or c.shape[-1] != d:
            raise ValueError(
                f"concentration_states must be [B={batch}, n, D={d}], got shape {tuple(c.shape)}"
            )
        if not bool(torch.isfinite(c).all()):
            raise ValueError("concentration_states contain NaN/inf")
        mode = self.cfg.concentration_mode
        if mode == "per_slot":
            if c.shape[1] != k:
                raise ValueError(
                    f"concentration_states has {c.shape[1]} tokens per sample but the head has num_slots={k} "
                    "(concentration_mode='per_slot' needs one state per slot)"
                )
            return c
        if mode == "broadcast":
            if c.shape[1] != 1:
                raise ValueError(
                    f"concentration_mode='broadcast' needs exactly 1 state per sample, got {c.shape[1]}"
                )
            return c.expand(-1, k, -1)
        last = c[:, -k:]  # zero_pad: the last ≤K states, zero-padded at the end
        return torch.cat([last, last.new_zeros(batch, k - last.shape[1], d)], dim=1)

    def _check_embeddings(self, image_embeddings: Tensor, batch: int) -> None:
        want = (batch, *self.cfg.embedding_shape)
        if tuple(image_embeddings.shape) != want:
            raise ValueError(
                f"image_embeddings must have shape {want} (SAM embedding per image), got {tuple(image_embeddings.shape)}"
            )
        if not bool(torch.isfinite(image_embeddings).all()):
            raise ValueError("image_embeddings contain NaN/inf")

    # ----------------------------------------------------------------- forward
    def encode_support(self, hook_states: Tensor, token_mask: Tensor | None = None) -> ConceptSupport:
        """Sparse SAE support of the selected tokens (use it to precompute a frozen prefix)."""
        return self.concepts.encode(hook_states, token_mask)

    def forward(
        self,
        hook_states: Tensor,
        concept_token_mask: Tensor | None,
        concentration_states: Tensor,
        image_embeddings: Tensor,
        targets: Sequence[Tensor] | None = None,
        *,
        prefix_support: ConceptSupport | None = None,
        step: int = 0,
    ) -> HeadOutput:
        """Run the head.

        Args:
            hook_states: [B, T, D] hook-layer states (HF hidden_states[L]).
            concept_token_mask: [B, T] bool, tokens whose SAE concepts enter the head (None: all).
                With `prefix_support`, select only the tokens it does not cover.
            concentration_states: [B, K, D] last-layer states of the concentration tokens
                ([B, 1, D] in 'broadcast' mode, [B, ≤K, D] in 'zero_pad' mode).
            image_embeddings: [B, 256, 64, 64] SAM image embeddings (any float dtype).
            targets: optional B GT tensors [N_b, 256, 256] (N_b may be 0) → matching and losses.
            prefix_support: precomputed support of tokens not selected by `concept_token_mask`
                (e.g. `ConceptSupport.stack` of `SupportCache` entries for the frozen prefix).
            step: optimisation step, selects the loss coefficients (c_d, c_f).
        """
        b = hook_states.shape[0]
        slot_states = self._slot_states(concentration_states, b)  # [B, K, D]
        self._check_embeddings(image_embeddings, b)
        support = self.concepts.encode(hook_states, concept_token_mask)
        if prefix_support is not None:
            support = ConceptSupport.merge(prefix_support.to(hook_states.device), support)
        bags = support.bags()
        concepts = self.codebook(support, bags)  # [n_bags, d_c]
        agg = self.aggregator(
            concepts, bags, b, record_attention=self.cfg.record_attention
        )  # r_k [B, K, d_c]
        queries = self.fusion(slot_states, agg.slot_reps)  # [B, K, D]
        mapped = self.slot_mapper(queries, image_embeddings)  # heat [B, K, S, S], conf [B, K]
        masks = self.mask_head(image_embeddings, mapped.heatmap_logits)  # [B, K, S, S]
        out = HeadOutput(
            slot_heatmaps=mapped.heatmap_logits,
            slot_confidence_logits=mapped.confidence_logits,
            slot_masks=masks,
            slot_queries=queries,
            slot_reps=agg.slot_reps,
            support=support,
            provenance=Provenance.build(support, bags, agg),
            conf_threshold=self.cfg.conf_threshold,
        )
        if targets is not None:
            self.attach_losses(out, targets, step)
        return out

    def attach_losses(self, out: HeadOutput, targets: Sequence[Tensor], step: int = 0) -> None:
        """Match slots to `targets` and fill `out.matches` / `out.losses`."""
        lc = self.cfg
        b, k, s, _ = out.slot_masks.shape
        if len(targets) != b:
            raise ValueError(f"got {len(targets)} target tensors for a batch of {b}")
        for i, t in enumerate(targets):
            if t.ndim != 3 or tuple(t.shape[1:]) != (s, s):
                raise ValueError(f"targets[{i}] must be [N, {s}, {s}], got shape {tuple(t.shape)}")
        kept, dropped = prepare_targets(targets, k, lc.loss.too_many_targets)
        matches = [
            match_slots(
                out.slot_masks[i],
                kept[i],
                out.slot_confidence_logits[i],
                lc.loss.match_iou_weight,
                lc.loss.match_conf_weight,
            )
            for i in range(b)
        ]
        out.matches = matches
        out.losses = head_losses(
            out.slot_heatmaps,
            out.slot_masks,
            out.slot_confidence_logits,
            kept,
            matches,
            lc.loss,
            step,
            dropped,
        )

    # ------------------------------------------------------------------ images
    def embed_images(
        self, images: Sequence[Image.Image | np.ndarray | Tensor], cache: ImageEmbeddingCache | None = None
    ) -> Tensor:
        """SAM embeddings [B, 256, 64, 64] (fp16 from the cache, else computed) with the frozen encoder."""
        if cache is None:
            if self.image_encoder is None:
                raise ValueError(
                    "this head has no image_encoder; build it with image_encoder=True or pass a cache"
                )
            cache = ImageEmbeddingCache(self.image_encoder, None, "uncached", self.cfg.sam_encoder.img_size)
        return cache.embed(images)

    def load_sam_weights(self, checkpoint: str | os.PathLike[str]) -> None:
        """Load SAM prompt encoder + mask decoder (and image encoder, if attached) from a SAM checkpoint."""
        sd = load_sam_checkpoint(checkpoint)
        self.mask_head.load_sam_state_dict(sd)
        if self.image_encoder is not None:
            enc = {
                k.removeprefix("image_encoder."): v for k, v in sd.items() if k.startswith("image_encoder.")
            }
            self.image_encoder.load_state_dict(enc)


def build_head(
    cfg: HeadConfig,
    sae: nn.Module,
    *,
    image_encoder: bool = False,
    sam_checkpoint: str | os.PathLike[str] | None = None,
) -> SegCompassHead:
    """Build a `SegCompassHead`.

    Args:
        cfg: head configuration.
        sae: the frozen SAE (sae-lens `SAE` or same layout) for the hook layer.
        image_encoder: attach a frozen SAM image encoder of shape `cfg.sam_encoder`.
        sam_checkpoint: SAM checkpoint for the prompt encoder, mask decoder (and image encoder);
            random initialisation when None.
    """
    enc = build_sam_image_encoder(cfg.sam_encoder) if image_encoder else None
    head = SegCompassHead(cfg, sae, enc)
    if sam_checkpoint is not None:
        head.load_sam_weights(sam_checkpoint)
        logger.info("loaded SAM weights from %s", sam_checkpoint)
    return head


#: Builders by preset name, segment-anything style: `head_registry["tiny"](sae, num_slots=K)` (K: the policy's).
head_registry: dict[str, Callable[..., SegCompassHead]] = {
    "paper": lambda sae, num_slots, **kw: build_head(
        HeadConfig.paper(check_sae(sae)[0], num_slots=num_slots), sae, **kw
    ),
    "tiny": lambda sae, num_slots, **kw: build_head(
        HeadConfig.tiny(*check_sae(sae), num_slots=num_slots), sae, **kw
    ),
}
