"""The one sample type every loader yields, and the errors loaders raise."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from sae.images import open_image

if TYPE_CHECKING:
    from torch import Tensor


class DatasetFormatError(ValueError):
    """A file does not have the fields or structure of its format."""


class UnknownSplitError(ValueError):
    """The requested split is not one the data set has."""


class MissingImageError(FileNotFoundError):
    """Samples refer to image files that do not exist (pass ``skip_missing=True`` to count and skip them)."""


class InvalidGeometryError(ValueError):
    """A polygon or RLE cannot be turned into a mask (raised only with ``strict=True``; counted otherwise)."""


@dataclass
class RefSample:
    """One referring / reasoning-segmentation sample: one image, one sentence, its target instances."""

    sample_id: str
    """Unique id, ``<source>/<split>/<ref or file>/<sentence>``."""
    source: str
    """Data set it came from (``refcoco``, ``grefcoco``, ``reasonseg``, …)."""
    split: str
    """Split name as stored in the data."""
    image_path: Path
    """Image file."""
    image_size: tuple[int, int]
    """(H, W) of the image and of every mask."""
    text: str
    """The sentence this sample is scored on."""
    texts: list[str]
    """All sentences available for the image/ref (``text`` is ``texts[text_index]``)."""
    masks: list[np.ndarray]
    """One bool [H, W] mask per target instance (empty list when there is no target)."""
    no_target: bool = False
    """True when the sentence refers to nothing (gRefCOCO ``[-1]``, a ReasonSeg file without targets)."""
    ignore: np.ndarray | None = None
    """Bool [H, W] pixels to leave out of the metrics (ReasonSeg "ignore" polygons), when the format has one."""
    text_index: int = 0
    """Index of ``text`` in ``texts``."""
    is_sentence: bool | None = None
    """ReasonSeg: the text is a long sentence rather than a short query."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Format-specific fields (ref_id, ann_ids, image_id, category_ids, sent_id, kind, …)."""

    def union_mask(self) -> np.ndarray:
        """[H, W] bool union of the instance masks."""
        out = np.zeros(self.image_size, dtype=bool)
        for m in self.masks:
            out |= m
        return out

    def stacked_masks(self) -> np.ndarray:
        """[N, H, W] bool instance masks (N may be 0)."""
        if not self.masks:
            return np.zeros((0, *self.image_size), dtype=bool)
        return np.stack(self.masks)

    def load_image(self) -> Image.Image:
        """The image as displayed (EXIF orientation applied), in 8-bit RGB — the frame the masks are in.

        Raises:
            DatasetFormatError: the displayed image's size is not ``image_size`` (an annotation written for
                another frame or another file), so the masks would not line up with it.
            FileNotFoundError, ImageReadError: the file is missing or cannot be decoded.
        """
        image = open_image(self.image_path)
        if (image.height, image.width) != tuple(self.image_size):
            raise DatasetFormatError(
                f"{self.sample_id}: image {self.image_path} is {image.height}x{image.width} (HxW) as displayed "
                f"(EXIF orientation applied) but its annotation says {self.image_size[0]}x{self.image_size[1]}; "
                "the masks would not line up with the image"
            )
        return image

    def sam_targets(self, img_size: int = 1024, out_size: int = 256) -> tuple[Tensor, Tensor | None]:
        """GT instances and ignore mask in the head's frame: longest side ``img_size``, padded, then
        ``out_size``² (``segcompass.head.preprocess.preprocess_masks``). Returns ([N, S, S], [S, S] or None)."""
        from segcompass.head.preprocess import preprocess_masks

        masks = preprocess_masks(self.stacked_masks(), img_size, out_size)
        ignore = None
        if self.ignore is not None:
            ignore = preprocess_masks(self.ignore[None], img_size, out_size)[0]
        return masks, ignore
