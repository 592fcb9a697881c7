"""Small builders shared by the tests of `segcompass.head` (not a test module)."""

from __future__ import annotations

import torch
from sae_lens import StandardSAE, StandardSAEConfig

from segcompass.head import HeadConfig, SegCompassHead, build_head


def make_sae(d_in: int = 16, d_sae: int = 256, seed: int = 0, **cfg_kwargs: object) -> StandardSAE:
    """A randomly initialised sae-lens StandardSAE with a random b_enc / b_dec."""
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, **cfg_kwargs))  # type: ignore[arg-type]
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def make_head(
    d_in: int = 16,
    d_sae: int = 256,
    seed: int = 0,
    image_encoder: bool = False,
    num_slots: int = 2,
    **overrides: object,
) -> SegCompassHead:
    """A tiny head (tiny SAM parts, `num_slots` slots) over a random SAE."""
    sae = make_sae(d_in, d_sae, seed, apply_b_dec_to_input=False)
    torch.manual_seed(seed)
    cfg = HeadConfig.tiny(d_in, d_sae, num_slots=num_slots, **overrides)
    return build_head(cfg, sae, image_encoder=image_encoder)


def make_inputs(
    head: SegCompassHead, batch: int = 2, seq: int = 12, seed: int = 1
) -> dict[str, torch.Tensor]:
    """Random head inputs whose hook states have a non-empty support."""
    g = torch.Generator().manual_seed(seed)
    cfg = head.cfg
    return {
        "hook_states": torch.randn(batch, seq, cfg.d_in, generator=g) * 2.0,
        "concept_token_mask": torch.ones(batch, seq, dtype=torch.bool),
        "concentration_states": torch.randn(batch, cfg.num_slots, cfg.d_in, generator=g),
        "image_embeddings": torch.randn(batch, *cfg.embedding_shape, generator=g),
    }
