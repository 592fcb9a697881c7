"""Backgrounds: textured base layers and non-instance clutter (or a plain light background for the control)."""

from __future__ import annotations

import math

import numpy as np

from segcompass.world.config import WorldConfig
from segcompass.world.paint import Canvas, colour_word, jitter_rgb, smooth_noise
from segcompass.world.vocab import COLOURS


def _a(word: str) -> str:
    """Word with its indefinite article."""
    return ("an " if word[0] in "aeiou" else "a ") + word


_STYLES = ("gradient", "noise", "stripes", "checker")
_CLUTTER = ("blob", "ellipse", "ring", "line", "strip")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """Half the time a jittered object colour, otherwise any RGB."""
    if rng.random() < 0.5:
        return jitter_rgb(rng, COLOURS[str(rng.choice(list(COLOURS)))], 20)
    return rng.uniform(0, 255, 3).astype(np.float32)


def _base_layer(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, str]:
    style = _STYLES[int(rng.integers(len(_STYLES)))]
    c0, c1 = _random_colour(rng), _random_colour(rng)
    xs = np.arange(width, dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    if style == "gradient":
        t = (xs[None, :] * math.cos(theta) + ys[:, None] * math.sin(theta)) / max(width, height)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        canvas = c0 + t[..., None] * (c1 - c0)
        w0, w1 = colour_word(c0), colour_word(c1)
        desc = f"a shaded {w0} background" if w0 == w1 else f"{_a(w0)}-to-{w1} gradient background"
    elif style == "noise":
        noise = smooth_noise(rng, height, width, int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3)
        canvas = noise * np.float32(255.0)
        desc = "a mottled multicoloured background"
    else:
        period = rng.uniform(10, 48) if style == "stripes" else rng.uniform(24, 64)
        k = np.float32(2 * math.pi / period)
        if style == "stripes":
            a, b, phi = k * math.cos(theta), k * math.sin(theta), rng.uniform(0, 2 * math.pi)
            sx, cx = np.sin(a * xs), np.cos(a * xs)
            sy, cy = np.sin(b * ys + np.float32(phi)), np.cos(b * ys + np.float32(phi))
            wave = sx[None, :] * cy[:, None] + cx[None, :] * sy[:, None]
        else:
            wave = (
                np.sin(k * xs + np.float32(rng.uniform(0, 6.3)))[None, :]
                * np.sin(k * ys + np.float32(rng.uniform(0, 6.3)))[:, None]
            )
        t = np.clip(0.5 + np.float32(rng.uniform(0.6, 4.0)) * wave, 0.0, 1.0)
        canvas = c0 + t[..., None] * (c1 - c0)
        pattern = "striped" if style == "stripes" else "checkered"
        w0, w1 = colour_word(c0), colour_word(c1)
        desc = f"a {pattern} {w0} background" if w0 == w1 else f"a {pattern} {w0} and {w1} background"
    return canvas.astype(np.float32), desc


def _clutter_mask(rng: np.random.Generator, kind: str, size: float) -> np.ndarray:
    """Bool mask of one clutter item on its own box of about `size` pixels."""
    n = max(8, int(size))
    c = (n - 1) / 2.0
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
    dx, dy = (xs - c) / (n / 2), (ys - c) / (n / 2)
    theta = rng.uniform(0, math.pi)
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    if kind == "blob":
        field = 1.0 - (dx * dx + dy * dy) + 0.9 * (smooth_noise(rng, n, n, 4, 4, 1)[..., 0] - 0.5)
        return field > 0.45
    if kind == "ellipse":
        ratio = rng.uniform(2.2, 4.0)
        return (u * u + (v * ratio) ** 2) <= 0.9
    if kind == "ring":
        r2 = dx * dx + dy * dy
        return (r2 <= 0.9) & (r2 >= rng.uniform(0.25, 0.5))
    if kind == "line":
        half_w = rng.uniform(0.05, 0.12)
        return (np.abs(v) <= half_w) & (np.abs(u) <= 0.95)
    half_w = rng.uniform(0.15, 0.3)  # strip: a long bar
    return (np.abs(v) <= half_w) & (np.abs(u) <= 0.95)


def _add_clutter(rng: np.random.Generator, canvas: Canvas, count: int) -> list[str]:
    height, width = canvas.label.shape
    s = math.sqrt(width * height)
    kinds = []
    for _ in range(count):
        kind = _CLUTTER[int(rng.integers(len(_CLUTTER)))]
        mask = _clutter_mask(rng, kind, rng.uniform(0.25, 0.6) * s)
        n = mask.shape[0]
        x0 = int(rng.integers(-n // 3, width - 2 * n // 3))
        y0 = int(rng.integers(-n // 3, height - 2 * n // 3))
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + n, width), min(y0 + n, height)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        sub = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        canvas.paint((cx0, cy0, cx1, cy1), sub, _random_colour(rng), rng, textured=True)
        kinds.append(kind)
    return kinds


def render_background(
    config: WorldConfig, rng: np.random.Generator, width: int, height: int
) -> tuple[Canvas, str]:
    """Background canvas (base layer with grain, plus clutter regions) and a short description of it."""
    if config.plain:
        grey = float(rng.integers(225, 251))
        return Canvas(np.full((height, width, 3), grey, dtype=np.float32)), "a plain light grey background"
    base, desc = _base_layer(rng, width, height)
    grain = smooth_noise(rng, height, width, max(2, height // 6), max(2, width // 6), 1)
    base += (grain - 0.5) * np.float32(rng.uniform(20, 60))
    canvas = Canvas(base)
    lo, hi = config.clutter_range
    kinds = _add_clutter(rng, canvas, int(rng.integers(lo, hi + 1)))
    if kinds:
        names = sorted(set(kinds))
        desc += f" with {len(kinds)} clutter marks ({', '.join(k + 's' for k in names)})"
    return canvas, desc


def add_sensor_noise(rng: np.random.Generator, canvas: np.ndarray, amplitude: float) -> None:
    """Add per-pixel luminance noise uniform in [-amplitude, amplitude] in place."""
    h, w = canvas.shape[:2]
    canvas += ((rng.random((h, w), dtype=np.float32) - 0.5) * np.float32(2 * amplitude))[..., None]
