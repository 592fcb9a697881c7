"""How an image's visual tokens map back to its pixels.

A backbone's processor resizes (and, for CLIP-style processors, centre-crops) the image and cuts it into a
grid of cells, one visual token each. `ImageGeometry` records that transformation so that any analysis can
turn "token (row, col)" into a box of original-image pixels without re-running the processor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ImageGeometry:
    """The processor's view of one image. All sizes are (height, width) in pixels."""

    original_size: tuple[int, int]
    """Size of the image as given to the processor."""
    resized_size: tuple[int, int]
    """Size after the processor's resize, before any crop."""
    crop_top_left: tuple[int, int]
    """Offset (top, left) of the crop in resized coordinates; (0, 0) when nothing is cropped."""
    grid: tuple[int, int]
    """Visual-token grid (rows, cols); tokens are laid out in row-major order."""
    cell_size: int
    """Side of the square cell covered by one visual token, in resized pixels."""

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def token_boxes(self) -> np.ndarray:
        """Boxes of every token in original-image pixels, float [rows·cols, 4] as (x0, y0, x1, y1).

        Boxes are clipped to the image; a token that lies entirely in padding has an empty box.
        """
        rows, cols = self.grid
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        top, left = self.crop_top_left
        sy = self.original_size[0] / self.resized_size[0]
        sx = self.original_size[1] / self.resized_size[1]
        x0 = (left + c.ravel() * self.cell_size) * sx
        y0 = (top + r.ravel() * self.cell_size) * sy
        x1 = (left + (c.ravel() + 1) * self.cell_size) * sx
        y1 = (top + (r.ravel() + 1) * self.cell_size) * sy
        h, w = self.original_size
        boxes = np.stack([x0, y0, x1, y1], axis=1)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return boxes

    def token_index_map(self) -> np.ndarray:
        """int32 [H, W] map of original pixels to the token that covers them (row-major index), −1 if none.

        A pixel belongs to the token whose cell contains the pixel's centre.
        """
        h, w = self.original_size
        top, left = self.crop_top_left
        ys = (np.arange(h) + 0.5) * self.resized_size[0] / h - top
        xs = (np.arange(w) + 0.5) * self.resized_size[1] / w - left
        rows = np.floor(ys / self.cell_size).astype(np.int64)
        cols = np.floor(xs / self.cell_size).astype(np.int64)
        valid_r = (rows >= 0) & (rows < self.grid[0])
        valid_c = (cols >= 0) & (cols < self.grid[1])
        index = rows[:, None] * self.grid[1] + cols[None, :]
        index[~(valid_r[:, None] & valid_c[None, :])] = -1
        return index.astype(np.int32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImageGeometry:
        return cls(
            original_size=tuple(d["original_size"]),
            resized_size=tuple(d["resized_size"]),
            crop_top_left=tuple(d["crop_top_left"]),
            grid=tuple(d["grid"]),
            cell_size=int(d["cell_size"]),
        )
