"""Masks between the image frame (H, W) and the head's letterbox frame (docs/design.md §4 "SAM images").

The head sees the image resized so its longest side is ``img_size`` (1024), padded bottom/right to
``img_size``², and predicts masks at S² (S = 256 for the SegCompass head; any S works).

- :func:`head_to_image_frame` inverts that letterbox with **nearest** sampling: every image pixel takes
  the value of the S² cell under its centre (centre → resized image inside the ``img_size``² square →
  × S / ``img_size``), so the padding is never read and only the unpadded region counts. Nearest keeps a
  rectangle a rectangle; bilinear-then-threshold (segment-anything's ``postprocess_masks`` on binary
  masks) would round its corners (a corner pixel at 0.7 × 0.7 < 0.5 drops out). The edges land within
  one image pixel of where ``preprocess_masks`` put them for images up to a few hundred pixels at S = 256
  (one cell = 4 letterbox pixels). Probability masks are thresholded (0.5) first.
- :func:`image_to_head_frame` goes the other way for predictors that start from image-frame masks (the
  baselines). At ``out_size = img_size`` (the default) it is the same nearest sampling, and the round trip
  through :func:`head_to_image_frame` is exact for images whose longest side is ≤ ``img_size``; at a
  smaller ``out_size`` it is :func:`segcompass.head.preprocess.preprocess_masks` (what GT targets go
  through: bilinear, area, threshold 0.5).

All index arithmetic is integer, so the results do not depend on floating-point rounding.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from segcompass.head.preprocess import longest_side_shape, preprocess_masks


def _as_tensor(masks: np.ndarray | Tensor) -> Tensor:
    return masks if isinstance(masks, Tensor) else torch.from_numpy(np.ascontiguousarray(masks))


def _centre_index(n_out: int, n_in: int, num: int = 1, den: int = 1) -> Tensor:
    """floor((i + ½) · n_in/n_out · num/den) for i < n_out, in exact integer arithmetic (always
    < n_in · num/den, the part of the input that holds the image)."""
    i = torch.arange(n_out, dtype=torch.int64)
    return ((2 * i + 1) * n_in * num) // (2 * n_out * den)


def head_to_image_frame(
    masks: np.ndarray | Tensor, image_size: tuple[int, int], img_size: int = 1024, threshold: float = 0.5
) -> Tensor:
    """Masks in the head's frame [K, S, S] → bool masks in the image frame [K, H, W] (nearest).

    Each image pixel takes the value of the S² cell under its centre (the centre mapped through the
    resize to the ``img_size`` letterbox, then scaled by S / ``img_size``); the padding is never read.

    Args:
        masks: [K, S, S] bool masks, or probabilities in [0, 1] (on when ≥ ``threshold``).
        image_size: (H, W) of the original image.
        img_size: side of the letterbox square (the longest image side is resized to this).
        threshold: binarisation of probability masks.
    """
    m = _as_tensor(masks)
    if m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise ValueError(f"masks must be [K, S, S] (square), got shape {tuple(m.shape)}")
    h, w = int(image_size[0]), int(image_size[1])
    s = m.shape[-1]
    if m.shape[0] == 0:
        return torch.zeros(0, h, w, dtype=torch.bool)
    nh, nw = longest_side_shape(h, w, img_size)
    rows = _centre_index(h, nh, s, img_size)
    cols = _centre_index(w, nw, s, img_size)
    binary = m.detach().cpu()
    binary = binary if binary.dtype == torch.bool else binary >= threshold
    return binary[:, rows][:, :, cols]


def image_to_head_frame(
    masks: np.ndarray | Tensor, img_size: int = 1024, out_size: int | None = None
) -> Tensor:
    """Image-frame masks [K, H, W] → bool masks in the head's frame [K, S, S].

    ``out_size`` None (or ``img_size``): S = ``img_size``, nearest (each letterbox pixel takes the image
    pixel under its centre); the round trip through :func:`head_to_image_frame` gives the input back
    exactly when max(H, W) ≤ ``img_size``. Otherwise the GT path,
    :func:`~segcompass.head.preprocess.preprocess_masks` (bilinear, area, threshold 0.5).
    """
    m = _as_tensor(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {tuple(m.shape)}")
    k, h, w = m.shape
    if out_size is not None and out_size != img_size:
        return preprocess_masks(m, img_size, out_size) >= 0.5
    nh, nw = longest_side_shape(h, w, img_size)
    out = torch.zeros(k, img_size, img_size, dtype=torch.bool)
    if k:
        binary = m.detach().cpu()
        binary = binary if binary.dtype == torch.bool else binary >= 0.5
        out[:, :nh, :nw] = binary[:, _centre_index(nh, h)][:, :, _centre_index(nw, w)]
    return out
