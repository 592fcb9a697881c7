"""A tiny-SAM config small enough for unit tests (64² input, one block each) and hand-built masks."""

from __future__ import annotations

import torch

SMALL_SAM = dict(
    encoder={"embed_dim": 16, "depth": 1, "num_heads": 2, "global_attn_indexes": [0], "img_size": 64,
             "patch_size": 16, "window_size": 2},
    decoder={"transformer_depth": 1, "transformer_mlp_dim": 16, "transformer_heads": 2, "iou_head_hidden_dim": 8},
    steps=2, batch_images=2, prompts_per_image=3, train_scenes=3, val_scenes=2, eval_size=32, loss_size=32,
)  # fmt: skip
"""`SamWarmupConfig` fields of the unit tests' tiny SAM."""


def rect(side: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """bool [side, side], True on rows y0:y1 and columns x0:x1."""
    m = torch.zeros(side, side, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m
