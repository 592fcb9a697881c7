"""Aggregator: K learned slot tokens + a pre-norm transformer encoder over [slots; concept tokens].

The layers are run by hand so each layer's attention of the slots over the concept tokens can be
returned for provenance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .support import TokenBags


class PreNormEncoderLayer(nn.Module):
    """x ← x + MHA(LN(x)); x ← x + FF(LN(x)) with GELU."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad_mask: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """x: [B, S, d]; pad_mask: [B, S] True = padding. Returns (x, attention [B, S, S] head-mean or None)."""
        h = self.norm1(x)
        a, w = self.attn(
            h, h, h, key_padding_mask=pad_mask, need_weights=need_weights, average_attn_weights=True
        )
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.norm2(x)))
        return x, w


@dataclass
class AggregatorOutput:
    """Result of the aggregator."""

    slot_reps: Tensor
    """r_k: [B, K, d_c]."""
    concept_pad_mask: Tensor
    """[B, n_max] True where the padded concept sequence has no token."""
    slot_attention: Tensor | None
    """[L, B, K, n_max]: per layer, head-averaged attention of each slot over the concept tokens
    (the remaining mass goes to the slot tokens); None when not recorded."""


class Aggregator(nn.Module):
    """Slot tokens attend over the concept tokens of each sample."""

    def __init__(self, d_c: int, num_slots: int, layers: int, heads: int, ff: int, dropout: float = 0.0):
        super().__init__()
        self.num_slots = num_slots
        self.slot_tokens = nn.Parameter(torch.randn(num_slots, d_c) * 0.02)  # [K, d_c]
        self.layers = nn.ModuleList(PreNormEncoderLayer(d_c, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_c)

    @staticmethod
    def pad_concepts(concepts: Tensor, bags: TokenBags, batch_size: int) -> tuple[Tensor, Tensor]:
        """Scatter bag vectors [n_bags, d_c] into a padded [B, n_max, d_c] sequence (+ pad mask [B, n_max])."""
        n_max = int(bags.counts_per_sample.max()) if batch_size and bags.batch.numel() else 0
        padded = concepts.new_zeros(batch_size, n_max, concepts.shape[-1])
        padded = padded.index_put((bags.batch, bags.slot_in_sample), concepts)
        cols = torch.arange(n_max, device=concepts.device)
        pad_mask = cols.unsqueeze(0) >= bags.counts_per_sample.unsqueeze(1)  # [B, n_max]
        return padded, pad_mask

    def forward(
        self, concepts: Tensor, bags: TokenBags, batch_size: int, record_attention: bool = True
    ) -> AggregatorOutput:
        """concepts: [n_bags, d_c] codebook output; bags: grouping of those rows by sample."""
        k = self.num_slots
        seq, pad = self.pad_concepts(concepts, bags, batch_size)  # [B, n, d_c], [B, n]
        slots = self.slot_tokens.unsqueeze(0).expand(batch_size, -1, -1)  # [B, K, d_c]
        x = torch.cat([slots, seq], dim=1)  # [B, K + n, d_c]
        full_pad = F.pad(pad, (k, 0), value=False)  # slots are never padding
        attn = []
        for layer in self.layers:
            x, w = layer(x, full_pad, need_weights=record_attention)
            if w is not None:
                attn.append(w[:, :k, k:])  # [B, K, n]
        reps = self.norm(x[:, :k])  # [B, K, d_c]
        return AggregatorOutput(reps, pad, torch.stack(attn) if attn else None)
