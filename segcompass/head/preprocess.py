"""SAM image and mask preprocessing: longest side → 1024, pad bottom/right, SAM mean/std; masks → 256²."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from sae.images import as_rgb

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def longest_side_shape(h: int, w: int, target: int) -> tuple[int, int]:
    """(new_h, new_w) with the longest side = target, as segment-anything's ResizeLongestSide."""
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass
class SamImage:
    """A preprocessed image."""

    pixels: Tensor
    """[3, S, S] float, normalised with SAM mean/std, zero-padded bottom/right (S = 1024)."""
    original_size: tuple[int, int]
    """(H, W) of the input image."""
    input_size: tuple[int, int]
    """(h, w) of the resized image inside the padded square."""


def as_uint8_hwc(image: Image.Image | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(image, Image.Image):  # the backbone's conversion: alpha over white, 16-bit scaled
        return np.asarray(as_rgb(image))
    arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {arr.dtype} {arr.shape}")
    return arr


def preprocess_image(image: Image.Image | np.ndarray | Tensor, img_size: int = 1024) -> SamImage:
    """Resize the longest side to `img_size` (bilinear, as SAM), normalise, pad bottom/right."""
    arr = as_uint8_hwc(image)
    h, w = arr.shape[:2]
    nh, nw = longest_side_shape(h, w, img_size)
    resized = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.Resampling.BILINEAR))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1).float()  # [3, nh, nw]
    mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    x = F.pad((x - mean) / std, (0, img_size - nw, 0, img_size - nh))  # [3, S, S]
    return SamImage(x, (h, w), (nh, nw))


def preprocess_masks(
    masks: np.ndarray | Tensor, img_size: int = 1024, out_size: int = 256, threshold: float | None = 0.5
) -> Tensor:
    """GT masks [N, H, W] → [N, out, out]: resized as the image (longest side img_size, padded), then out².

    Args:
        threshold: binarise at this value (None keeps the soft area-averaged masks).
    """
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {tuple(m.shape)}")
    n, h, w = m.shape
    if n == 0:
        return torch.zeros(0, out_size, out_size)
    nh, nw = longest_side_shape(h, w, img_size)
    x = F.interpolate(m.float().unsqueeze(1), size=(nh, nw), mode="bilinear", align_corners=False)
    x = F.pad(x, (0, img_size - nw, 0, img_size - nh))  # [N, 1, S, S]
    x = F.interpolate(x, size=(out_size, out_size), mode="area").squeeze(1)  # [N, out, out]
    return (x >= threshold).float() if threshold is not None else x
