"""Slot mapper: slot queries × SAM image keys → heatmap logits H_k (256²) and confidence logits c_k.

The paper's confidence is an MLP on the slot query alone. The query comes from the backbone's states, so
on a backbone that grounds the referent in the image (a 7B MLLM) it can know whether the target is there;
on one that does not (the tiny CPU backbone) it cannot, and a slot asked for "the purple star" is as
confident in a scene without one. ``conf_evidence`` adds what the slot found in the image to the
confidence input: the image embedding pooled under the slot's attention (softmax of its fused logits over
the grid) and the peak fused logit, projected to D and added to the query (results/head_diagnosis.md §8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SlotMapperOutput:
    """Heatmaps and confidences of every slot."""

    heatmap_logits: Tensor
    """[B, K, S, S] heatmap logits (S = heatmap_size, 256)."""
    head_logits: Tensor
    """[B, K, heads, g, g] per-head attention logits on the embedding grid (g = 64), before the fuser."""
    confidence_logits: Tensor
    """[B, K] raw confidence logits."""


class SlotMapper(nn.Module):
    """Multi-head dot-product logits of each slot query against a 1×1-conv key map of the SAM embedding.

    Args:
        d_model: slot-query width D.
        embed_dim: SAM image-embedding channels (256).
        heads, head_dim: query Linear(D → heads·head_dim) split into heads.
        fuser_channels: hidden channels of the 3×3 conv fuser of the per-head logits.
        heatmap_size: output side (bilinear upsampling from the grid).
        conf_hidden: hidden width of the confidence MLP.
        conf_evidence: add the slot's image evidence (attention-pooled embedding, peak logit) to the
            confidence MLP's input; False is the paper's query-only confidence.
    """

    def __init__(
        self,
        d_model: int,
        embed_dim: int = 256,
        heads: int = 4,
        head_dim: int = 64,
        fuser_channels: int = 16,
        heatmap_size: int = 256,
        conf_hidden: int = 256,
        conf_evidence: bool = False,
    ):
        super().__init__()
        self.heads, self.head_dim, self.heatmap_size = heads, head_dim, heatmap_size
        self.query = nn.Linear(d_model, heads * head_dim)
        self.key = nn.Conv2d(embed_dim, heads * head_dim, kernel_size=1)
        self.fuser = nn.Sequential(
            nn.Conv2d(heads, fuser_channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(fuser_channels, 1, 3, padding=1),
        )
        self.confidence = nn.Sequential(nn.Linear(d_model, conf_hidden), nn.GELU(), nn.Linear(conf_hidden, 1))
        self.evidence = nn.Linear(embed_dim + 1, d_model) if conf_evidence else None

    def forward(self, queries: Tensor, image_embeddings: Tensor) -> SlotMapperOutput:
        """queries: [B, K, D]; image_embeddings: [B, C, g, g]."""
        b, k, _ = queries.shape
        g = image_embeddings.shape[-1]
        q = self.query(queries).view(b, k, self.heads, self.head_dim)  # [B, K, h, dh]
        keys = self.key(image_embeddings.to(q.dtype)).view(
            b, self.heads, self.head_dim, g, g
        )  # [B, h, dh, g, g]
        logits = torch.einsum("bkhd,bhdxy->bkhxy", q, keys) / math.sqrt(self.head_dim)  # [B, K, h, g, g]
        fused = self.fuser(logits.reshape(b * k, self.heads, g, g))  # [B·K, 1, g, g]
        heat = F.interpolate(fused, size=(self.heatmap_size,) * 2, mode="bilinear", align_corners=False)
        heat = heat.view(b, k, self.heatmap_size, self.heatmap_size)  # [B, K, S, S]
        conf_in = queries
        if self.evidence is not None:
            conf_in = queries + self.evidence(self._evidence(fused.view(b, k, g * g), image_embeddings))
        conf = self.confidence(conf_in).squeeze(-1)  # [B, K]
        return SlotMapperOutput(heat, logits, conf)

    @staticmethod
    def _evidence(fused: Tensor, image_embeddings: Tensor) -> Tensor:
        """fused: [B, K, g²] slot logits on the grid → [B, K, C + 1]: the embedding pooled under the
        softmax of each slot's logits, and the slot's peak logit."""
        logits = fused.float()
        emb = image_embeddings.flatten(2).float()  # [B, C, g²]
        pooled = torch.einsum("bkn,bcn->bkc", logits.softmax(-1), emb)  # [B, K, C]
        peak = logits.amax(-1, keepdim=True)  # [B, K, 1]
        return torch.cat([pooled, peak], dim=-1).to(fused.dtype)
