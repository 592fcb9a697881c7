"""Image files as cameras and editors write them: EXIF-rotated photographs, grayscale, palette, RGBA, 16-bit.

Built with numpy + PIL directly (never through `sae.images`, the helper under test). The upright picture
has four flat quadrants — red top-left, green top-right, blue bottom-left, yellow bottom-right — so that
its orientation can be read back from any decoded copy, JPEG artefacts and all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, YELLOW = (220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30)
QUADRANTS = {"top_left": RED, "top_right": GREEN, "bottom_left": BLUE, "bottom_right": YELLOW}

# EXIF orientation → how the stored pixels are turned to display them (np.rot90's k, counter-clockwise).
# 3: rotate 180°; 6: rotate 90° clockwise; 8: rotate 90° counter-clockwise (EXIF 2.32, table of tag 274).
DISPLAY_ROT90 = {1: 0, 3: 2, 6: -1, 8: 1}


def upright(height: int = 40, width: int = 64) -> np.ndarray:
    """uint8 [H, W, 3]: the picture as it should be displayed (four coloured quadrants)."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    h2, w2 = height // 2, width // 2
    out[:h2, :w2], out[:h2, w2:] = RED, GREEN
    out[h2:, :w2], out[h2:, w2:] = BLUE, YELLOW
    return out


def stored_for(display: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that a viewer honouring `orientation` shows `display`."""
    return np.ascontiguousarray(np.rot90(display, k=-DISPLAY_ROT90[orientation]))


def save_oriented(path: Path, display: np.ndarray, orientation: int, fmt: str = "JPEG") -> Path:
    """Write `display` stored sideways/upside down with an EXIF Orientation tag (a phone photograph)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(stored_for(display, orientation)).save(path, format=fmt, exif=exif.tobytes(), **kwargs)
    return path


def quadrant_colours(image: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Median colour of each quadrant's centre region of an RGB array (robust to JPEG ringing)."""
    h, w = image.shape[:2]
    centres = {
        "top_left": (h // 4, w // 4),
        "top_right": (h // 4, 3 * w // 4),
        "bottom_left": (3 * h // 4, w // 4),
        "bottom_right": (3 * h // 4, 3 * w // 4),
    }
    out = {}
    for name, (r, c) in centres.items():
        patch = image[max(0, r - 2) : r + 3, max(0, c - 2) : c + 3].reshape(-1, image.shape[2])
        out[name] = tuple(int(v) for v in np.median(patch, axis=0))
    return out


def looks_upright(image: np.ndarray, tolerance: int = 40) -> bool:
    """Every quadrant has its colour (within `tolerance` per channel)."""
    got = quadrant_colours(image)
    return all(
        max(abs(a - b) for a, b in zip(got[k], v, strict=True)) <= tolerance for k, v in QUADRANTS.items()
    )
