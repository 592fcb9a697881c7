"""Painting helpers shared by objects and clutter: smooth noise, shading, texture and outlines."""

from __future__ import annotations

import numpy as np

from segcompass.world.vocab import COLOURS

_NAMED_RGB: dict[str, tuple[int, int, int]] = {
    **COLOURS,  # the object colours, then everyday colours of backgrounds
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
    "brown": (120, 75, 40),
    "pink": (240, 150, 190),
}


def colour_word(rgb: np.ndarray | tuple[float, float, float]) -> str:
    """Nearest everyday colour name of an RGB value (used only in background descriptions)."""
    v = np.asarray(rgb, dtype=float)
    names = list(_NAMED_RGB)
    d = [float(np.sum((v - np.asarray(_NAMED_RGB[n])) ** 2)) for n in names]
    return names[int(np.argmin(d))]


def _lerp_index(n: int, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Left grid index and fraction for n pixel centres spread over a g-point grid."""
    t = (np.arange(n, dtype=np.float32) + 0.5) * np.float32((g - 1) / n)
    i0 = np.minimum(t.astype(np.int64), g - 2)
    return i0, (t - i0).astype(np.float32)


def smooth_noise(rng: np.random.Generator, h: int, w: int, gh: int, gw: int, channels: int) -> np.ndarray:
    """Bilinearly interpolated random grid in [0, 1], float32 [h, w, channels].

    Separable gathers and lerps only (no BLAS: multi-threaded BLAS on tiny matrices is slow on busy CPUs).
    """
    grid = rng.random((gh, gw, channels), dtype=np.float32)
    iy, fy = _lerp_index(h, gh)
    rows = grid[iy] * (1 - fy)[:, None, None] + grid[iy + 1] * fy[:, None, None]  # [h, gw, c]
    ix, fx = _lerp_index(w, gw)
    return rows[:, ix] * (1 - fx)[None, :, None] + rows[:, ix + 1] * fx[None, :, None]


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """4-neighbour binary erosion repeated `steps` times (pixels outside the array count as empty)."""
    m = mask.copy()
    for _ in range(steps):
        inner = np.zeros_like(m)
        inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        m = inner
    return m


def jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 14) -> np.ndarray:
    """RGB plus uniform per-channel jitter, float32 [3]."""
    return np.clip(np.asarray(rgb, np.float32) + rng.integers(-amount, amount + 1, 3), 0, 255).astype(
        np.float32
    )


class Canvas:
    """A background plus painted regions, kept as a label map with per-pixel shading until `compose`.

    Painting writes two 2-D arrays (label and shade) instead of three colour channels; `compose` builds
    the RGB image once.
    """

    def __init__(self, background: np.ndarray) -> None:
        self.background = background
        """Background colours, float32 [H, W, 3] in 0..255."""
        h, w = background.shape[:2]
        self.label = np.zeros((h, w), dtype=np.int16)
        """0 where the background shows, else 1 + index into `colours` of the region painted last."""
        self.shade = np.ones((h, w), dtype=np.float32)
        """Multiplicative shading of the painted colour."""
        self.colours: list[np.ndarray] = []
        """Base colour of each painted region."""

    def paint(
        self,
        box: tuple[int, int, int, int],
        mask: np.ndarray,
        rgb: np.ndarray | tuple[int, int, int],
        rng: np.random.Generator,
        textured: bool,
        inner: np.ndarray | None = None,
    ) -> None:
        """Paint `mask` (over pixel box `box`) in `rgb`, on top of everything painted before.

        When `textured`, the fill gets a random linear shading, sometimes stripes or grain, and sometimes a
        darker outline (the pixels of `mask` outside `inner`, or a random-width erosion when `inner` is None).
        """
        x0, y0, x1, y1 = box
        self.colours.append(np.asarray(rgb, dtype=np.float32))
        np.copyto(self.label[y0:y1, x0:x1], np.int16(len(self.colours)), where=mask)
        if not textured:
            np.copyto(self.shade[y0:y1, x0:x1], np.float32(1.0), where=mask)
            return
        np.copyto(self.shade[y0:y1, x0:x1], texture(rng, mask, inner), where=mask)

    def compose(self) -> np.ndarray:
        """The RGB image, float32 [H, W, 3]."""
        lut = np.concatenate([np.zeros((1, 3), np.float32), *[c[None] for c in self.colours]], axis=0)
        painted = np.take(lut, self.label, axis=0)
        painted *= self.shade[..., None]
        np.copyto(painted, self.background, where=(self.label == 0)[..., None])
        return painted


def texture(rng: np.random.Generator, mask: np.ndarray, inner: np.ndarray | None) -> np.ndarray:
    """Shading field float32 [h, w] for a region: linear shading, maybe stripes or grain, maybe a dark rim."""
    h, w = mask.shape
    theta = rng.uniform(0, 2 * np.pi)
    gx = (np.arange(w, dtype=np.float32) - w / 2) * np.float32(np.cos(theta) / max(w, h))
    gy = (np.arange(h, dtype=np.float32) - h / 2) * np.float32(np.sin(theta) / max(w, h))
    strength = np.float32(rng.uniform(0.15, 0.45))
    shade = 1.0 + strength * gy[:, None] + strength * gx[None, :]
    style = rng.random()
    if style < 0.3:  # stripes in a lighter / darker tone of the same colour
        period = rng.uniform(6, 16)
        phi = np.float32(rng.uniform(0, 2 * np.pi))
        a = np.float32(2 * np.pi / period * np.cos(theta + 1.0))
        b = np.float32(2 * np.pi / period * np.sin(theta + 1.0))
        xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
        amp = np.float32(rng.uniform(0.06, 0.15))
        shade += (amp * np.cos(b * ys + phi))[:, None] * np.sin(a * xs)[None, :]
        shade += (amp * np.sin(b * ys + phi))[:, None] * np.cos(a * xs)[None, :]
    elif style < 0.55:  # grain
        shade += (smooth_noise(rng, h, w, max(2, h // 5), max(2, w // 5), 1)[..., 0] - 0.5) * np.float32(0.3)
    if rng.random() < 0.6:
        core = inner if inner is not None else erode(mask, int(rng.integers(1, 4)))
        shade[mask & ~core] *= np.float32(rng.uniform(0.45, 0.7))
    return shade
