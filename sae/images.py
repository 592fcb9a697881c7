"""Open images the way they are displayed: EXIF orientation applied, as 8-bit RGB.

Every place in SegCompass that reads an image file goes through `open_image` (pixels) or `image_size`
(header only), so that images, their sizes and the masks drawn for them agree:

* **EXIF orientation.** A photograph stored sideways with an Orientation tag (values 2–8, typical of
  phone cameras) is returned upright, as image viewers, browsers, labelme and OpenCV's `imread` show it;
  annotations are drawn on that frame. Orientations 5–8 swap width and height.
* **Modes.** Grayscale, palette and CMYK images become RGB; images with transparency (RGBA, LA, palette
  with a transparent index) are composited over white, as the Hugging Face image processors do; 16-bit
  grayscale is scaled to 8 bits instead of saturating.

`sae` is the lowest layer (`analysis` → `segcompass` → `sae`), so the helper lives here and both
`segcompass` and `analysis` import it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ORIENTATION_TAG = 0x0112
"""EXIF tag id of Orientation."""
_SWAPS_SIDES = frozenset({5, 6, 7, 8})
"""Orientations that rotate by 90° (with or without a mirror): width and height swap."""


class ImageReadError(OSError):
    """An image file exists but cannot be decoded (the message names the file)."""


def exif_orientation(image: Image.Image, origin: str = "image") -> int:
    """The EXIF Orientation (1–8) of an opened image; 1 when absent, unknown or unreadable (logged)."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception as err:
        logger.warning("%s: unreadable EXIF block (%s); using the stored orientation", origin, err)
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_rgb(image: Image.Image, origin: str = "image") -> Image.Image:
    """An opened PIL image as displayed (EXIF orientation applied) and converted to 8-bit RGB."""
    if exif_orientation(image, origin) != 1:
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as err:
            logger.warning("%s: cannot apply the EXIF orientation (%s); using the stored one", origin, err)
    return as_rgb(image)


def as_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode: transparency over white, 16-bit grayscale scaled (not clipped)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0  # 0..65535 -> 0..255
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file as displayed, in 8-bit RGB (the file is closed on return).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: it exists but is not an image Pillow can decode (the message names it).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return displayed_rgb(im, str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot decode image {path}: {err}") from err


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file as displayed (orientations 5–8 swap the sides); reads the header
    only for JPEG (PNG may need a full read to find a trailing EXIF chunk).

    Raises the same errors as `open_image`.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = exif_orientation(im, str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read the size of image {path}: {err}") from err
    return (w, h) if orientation in _SWAPS_SIDES else (h, w)
