"""A small on-disk image–text corpus (OBELICS-style records) for capture tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZES = [(200, 140), (112, 112), (150, 260), (180, 180), (240, 160), (130, 190)]
TEXTS = [
    "a red circle and a blue square",
    "the green triangle",
    "two yellow stars on stripes",
    "a purple hexagon near the top",
    "find every blue shape",
    "an orange cross at the bottom",
]


def write_corpus(root: Path, n: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(n):
            w, h = SIZES[i % len(SIZES)]
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
            ImageDraw.Draw(img).ellipse(
                (x0, y0, x0 + w // 3, y0 + h // 3), fill=tuple(int(c) for c in rng.integers(0, 255, 3))
            )
            img.save(root / "images" / f"{i:04d}.png")
            f.write(
                json.dumps(
                    {"id": f"doc{i:04d}", "image": f"images/{i:04d}.png", "text": TEXTS[i % len(TEXTS)]}
                )
                + "\n"
            )
    return root
