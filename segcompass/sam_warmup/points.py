"""Point prompts, as SAM's interactive training draws them, and their deterministic evaluation forms.

Points live on the fine mask grid (side F, e.g. 128²) as (row, col) pixels and are handed to SAM's prompt
encoder in input-image pixels (side I): the centre of fine pixel (y, x) is ((x + ½)·I/F − ½, (y + ½)·I/F − ½)
in SAM's convention (its `_embed_points` adds ½ to reach the pixel centre). Labels are SAM's: 1 positive,
0 negative, −1 padding (the prompt encoder's `not_a_point_embed`).

- training: one positive point uniform inside the instance; with some probability also 1 … n negative
  points, each on another instance or on the background near the instance (where a user would click to
  correct a leak);
- evaluation: one positive point at the instance's most interior pixel (maximum of the distance transform,
  the first such pixel in raster order), beside the prompt-alone baseline of a disk of the instance's
  equal-area radius around that point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

POSITIVE, NEGATIVE, PADDING = 1, 0, -1
"""SAM's point labels."""


@dataclass
class PointPrompt:
    """The points of one prompt on the fine grid."""

    yx: Tensor
    """[n, 2] long (row, col) pixels of the fine grid; the first is the positive point."""
    labels: Tensor
    """[n] long SAM labels (1 positive, 0 negative)."""


def interior_point(mask: Tensor) -> tuple[int, int]:
    """The most interior pixel of `mask` [F, F] (max Euclidean distance to the outside; pixels beyond the
    array count as outside; ties → first in raster order). Deterministic."""
    m = np.pad(mask.bool().numpy(), 1)
    if not m.any():
        raise ValueError("interior_point needs a non-empty mask")
    dist = distance_transform_edt(m)[1:-1, 1:-1]  # [F, F]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(y), int(x)


def disk(side: int, y: int, x: int, radius: float) -> Tensor:
    """Pixels within `radius` of (y, x) on a side² grid → bool [side, side]."""
    grid = torch.arange(side, dtype=torch.float32)
    d2 = (grid.view(-1, 1) - y) ** 2 + (grid.view(1, -1) - x) ** 2  # [side, side]
    return d2 <= radius**2


def disk_baseline(mask: Tensor) -> Tensor:
    """The point prompt alone as a mask: a disk of the instance's equal-area radius around its interior
    point → bool [F, F]."""
    y, x = interior_point(mask)
    return disk(mask.shape[-1], y, x, math.sqrt(float(mask.sum()) / math.pi))


def to_input_coords(yx: Tensor, fine_size: int, img_size: int) -> Tensor:
    """(row, col) pixels [..., 2] of the fine grid → SAM point coords (x, y) [..., 2] float in input pixels."""
    r = img_size / fine_size
    return (yx.flip(-1).float() + 0.5) * r - 0.5


def sample_point_prompt(
    mask: Tensor,
    others: Tensor,
    generator: torch.Generator,
    negative_prob: float = 0.5,
    max_negatives: int = 2,
) -> PointPrompt:
    """One positive point uniform in `mask` [F, F] (non-empty); with probability `negative_prob` also
    1 … `max_negatives` negatives, each on `others` [F, F] (the other instances) half of the time when
    there are any, else on the background within one equal-area radius of the instance's bounding box."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("sample_point_prompt needs a non-empty mask")
    i = int(torch.randint(ys.numel(), (1,), generator=generator))
    points, labels = [(int(ys[i]), int(xs[i]))], [POSITIVE]
    if float(torch.rand((), generator=generator)) < negative_prob:
        side = mask.shape[-1]
        r = math.ceil(math.sqrt(ys.numel() / math.pi))
        near = torch.zeros_like(mask)
        near[
            max(0, int(ys.min()) - r) : min(side, int(ys.max()) + r + 1),
            max(0, int(xs.min()) - r) : min(side, int(xs.max()) + r + 1),
        ] = True
        background = near & ~mask & ~others
        others = others & ~mask
        n = 1 + int(torch.randint(max_negatives, (1,), generator=generator))
        for _ in range(n):
            on_other = bool(others.any()) and float(torch.rand((), generator=generator)) < 0.5
            pool = others if on_other or not background.any() else background
            if not pool.any():
                break
            py, px = torch.nonzero(pool, as_tuple=True)
            j = int(torch.randint(py.numel(), (1,), generator=generator))
            points.append((int(py[j]), int(px[j])))
            labels.append(NEGATIVE)
    return PointPrompt(torch.tensor(points, dtype=torch.long), torch.tensor(labels, dtype=torch.long))


def stack_points(prompts: list[PointPrompt], fine_size: int, img_size: int) -> tuple[Tensor, Tensor]:
    """Point prompts → SAM's (coords [N, n, 2] float in input pixels, labels [N, n] long), padded to the
    longest with label −1."""
    n = max(len(p.labels) for p in prompts)
    coords = torch.zeros(len(prompts), n, 2)
    labels = torch.full((len(prompts), n), PADDING, dtype=torch.long)
    for i, p in enumerate(prompts):
        coords[i, : len(p.labels)] = to_input_coords(p.yx, fine_size, img_size)
        labels[i, : len(p.labels)] = p.labels
    return coords, labels


def error_clicks(pred: Tensor, target: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """SAM's iterative-training click: for each prompt one pixel uniform in the error region of the previous
    prediction, labelled positive where the instance was missed and negative where the mask leaked.

    Args:
        pred, target: bool [N, F, F] the previous prediction (thresholded) and the instance.
    Returns:
        (yx [N, 2] long pixels, labels [N] long); a prompt without errors gets label −1 (SAM's padding) at (0, 0).
    """
    error = (pred ^ target).flatten(1)  # [N, F·F]
    has = error.any(1)  # [N]
    weights = error.float()
    weights[~has] = 1.0  # any pixel; labelled padding below
    flat = torch.multinomial(weights, 1, generator=generator)[:, 0]  # [N]
    side = target.shape[-1]
    yx = torch.stack([flat // side, flat % side], dim=1)  # [N, 2]
    labels = target.flatten(1).gather(1, flat[:, None])[:, 0].long()  # 1 missed, 0 leaked
    labels[~has] = PADDING
    yx[~has] = 0
    return yx, labels
