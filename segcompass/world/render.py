"""Rendering a layout: background, then objects in z order (so the visible masks match the pixels)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segcompass.world.background import add_sensor_noise, render_background
from segcompass.world.config import WorldConfig
from segcompass.world.layout import Layout
from segcompass.world.shapes import rasterize


def render_layout(config: WorldConfig, rng: np.random.Generator, layout: Layout) -> tuple[Image.Image, str]:
    """Paint the layout's objects over a fresh background; returns the RGB image and the background text."""
    canvas, background = render_background(config, rng, layout.width, layout.height)
    textured = not config.plain
    for obj, box, full in sorted(
        zip(layout.objects, layout.boxes, layout.full, strict=True), key=lambda t: t[0].z
    ):
        inner = None
        if textured:
            width = float(rng.uniform(1.5, 3.5))
            lx, ly = obj.cx - box[0], obj.cy - box[1]
            inner = full & rasterize(
                obj.shape, lx, ly, max(obj.scale - width, 1.0), (0, 0, full.shape[1], full.shape[0])
            )
        canvas.paint(box, full, obj.rgb, rng, textured=textured, inner=inner)
    image = canvas.compose()
    if textured:
        add_sensor_noise(rng, image, float(rng.uniform(4, 14)))
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels), background
