"""Dense mask prompts drawn from an instance mask, as logits at the decoder's prompt size.

Two kinds, both what a slot heatmap of the SegCompass head looks like while it learns:

- a **blob**: a Gaussian bump centred on a random pixel of the instance, σ a random fraction of the
  instance's equal-area radius, mapped to logits in [−`scale`, +`scale`];
- a **coarse mask**: the instance averaged onto the embedding grid (¼ of the side), upsampled back,
  mapped to logits, plus Gaussian noise (`coarse_heatmap`, without the noise, is the evaluation's prompt).

Point prompts are in `points.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def blob_prompt(
    mask: Tensor, generator: torch.Generator, scale: float = 6.0, sigma_range=(0.2, 0.9)
) -> Tensor:
    """A Gaussian-bump prompt inside `mask` [S, S] (non-empty) → logits [S, S]."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("blob_prompt needs a non-empty mask")
    i = int(torch.randint(ys.numel(), (1,), generator=generator))
    r_eq = math.sqrt(ys.numel() / math.pi)
    lo, hi = sigma_range
    sigma = max(0.75, r_eq * (lo + (hi - lo) * float(torch.rand((), generator=generator))))
    return _bump_logits(mask.shape[-1], float(ys[i]), float(xs[i]), sigma, scale)


def coarse_heatmap(mask: Tensor, scale: float = 6.0) -> Tensor:
    """Deterministic evaluation prompt: the instance averaged on the embedding grid (¼ of the side),
    upsampled bilinearly, as logits in [−`scale`, +`scale`] (0 where half a cell is covered): [S, S]."""
    s = mask.shape[-1]
    low = F.avg_pool2d(mask.float()[None, None], 4)  # [1, 1, S/4, S/4]
    up = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)[0, 0]  # [S, S]
    return scale * (2.0 * up - 1.0)


def coarse_prompt(mask: Tensor, generator: torch.Generator, scale: float = 6.0, noise: float = 1.5) -> Tensor:
    """The instance at ¼ resolution, upsampled, as noisy logits [S, S] (`coarse_heatmap` + noise)."""
    s = mask.shape[-1]
    return coarse_heatmap(mask, scale) + noise * torch.randn(s, s, generator=generator)


def centre_blob_prompt(mask: Tensor, scale: float = 6.0, sigma_fraction: float = 0.7) -> Tensor:
    """Deterministic evaluation prompt: a blob on the instance pixel nearest its centroid, σ = 0.7 r_eq."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("centre_blob_prompt needs a non-empty mask")
    cy, cx = ys.float().mean(), xs.float().mean()
    i = int(torch.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    sigma = max(0.75, sigma_fraction * math.sqrt(ys.numel() / math.pi))
    return _bump_logits(mask.shape[-1], float(ys[i]), float(xs[i]), sigma, scale)


def _bump_logits(side: int, cy: float, cx: float, sigma: float, scale: float) -> Tensor:
    """Gaussian bump at (cy, cx) mapped to logits in [−scale, +scale]: [side, side]."""
    grid = torch.arange(side, dtype=torch.float32)
    d2 = (grid.view(-1, 1) - cy) ** 2 + (grid.view(1, -1) - cx) ** 2  # [S, S]
    return scale * (2.0 * torch.exp(-d2 / (2 * sigma**2)) - 1.0)
