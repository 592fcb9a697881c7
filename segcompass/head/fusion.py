"""Fusion of the concentration-token states e_k with the concept representations r_k.

q_k = SiLU(Linear_{2D→D}(LayerNorm_{2D}([e_k ; proj(r_k)]))), proj: Linear(d_c → D).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SlotFusion(nn.Module):
    """Fuse MLP: [e_k ; proj(r_k)] → slot query q_k ∈ R^D."""

    def __init__(self, d_model: int, d_c: int):
        super().__init__()
        self.proj = nn.Linear(d_c, d_model)
        self.norm = nn.LayerNorm(2 * d_model)
        self.linear = nn.Linear(2 * d_model, d_model)
        self.act = nn.SiLU()

    def forward(self, concentration: Tensor, slot_reps: Tensor) -> Tensor:
        """concentration: [B, K, D]; slot_reps: [B, K, d_c] → queries [B, K, D]."""
        x = torch.cat([concentration.to(slot_reps.dtype), self.proj(slot_reps)], dim=-1)  # [B, K, 2D]
        return self.act(self.linear(self.norm(x)))  # [B, K, D]
