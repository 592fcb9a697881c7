"""Pixel-contrast baseline: how much of the segmentation problem a linear probe on raw cell pixels solves.

Each image is resized to `size` x `size` and cut into `cell`-pixel cells (28 px = the tiny Qwen token grid,
14 px = the tiny LLaVA grid). A cell is "instance" when at least half of it is covered by object masks.
Two logistic-regression probes on the cell's raw RGB pixels (plus per-channel mean and std):

(a) instance vs background, over all cells;
(b) referred instance vs distractor, over instance cells of samples that have targets (a cell is
    "referred" when target masks cover more of it than non-target masks).

Run on the default world and on the plain-background control (`WorldConfig(plain=True)`): the plain world
should be nearly solved by (a); the default world should not, and (b) should stay near the majority-class
rate everywhere because pixels cannot know the instruction.

    python -m segcompass.world.contrast_probe --n-train 1000 --n-test 300 --cell 28
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from segcompass.world.config import WorldConfig
from segcompass.world.generate import generate_split
from segcompass.world.scene import WorldSample

logger = logging.getLogger(__name__)


@dataclass
class CellData:
    """Cell features and labels of a set of images."""

    features: np.ndarray
    """float32 [N, F]: cell pixels in [0, 1] (flattened RGB) then per-channel mean and std."""
    instance: np.ndarray
    """bool [N]: at least half the cell is covered by object masks."""
    referred: np.ndarray
    """int8 [N]: 1 referred instance, 0 distractor instance, -1 background or a no-target sample."""


def _coverage(mask: np.ndarray, size: int, cell: int) -> np.ndarray:
    """Fraction of each cell covered by `mask` after the resize to size x size, [G * G]."""
    img = Image.fromarray(mask.astype(np.float32)).resize((size, size), Image.Resampling.BOX)
    g = size // cell
    return np.asarray(img).reshape(g, cell, g, cell).mean(axis=(1, 3)).ravel()


def cell_data(sample: WorldSample, size: int = 112, cell: int = 28) -> CellData:
    """Features and labels of one sample's cells (row-major cell order)."""
    if size % cell:
        raise ValueError(f"size {size} is not a multiple of cell {cell}")
    g = size // cell
    pixels = (
        np.asarray(sample.image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    )
    cells = pixels.reshape(g, cell, g, cell, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, cell * cell, 3)
    feats = np.concatenate([cells.reshape(g * g, -1), cells.mean(axis=1), cells.std(axis=1)], axis=1)
    masks = sample.masks
    any_cov = _coverage(masks.any(axis=0), size, cell)
    instance = any_cov >= 0.5
    referred = np.full(g * g, -1, dtype=np.int8)
    if sample.target_ids:
        is_target = np.zeros(len(masks), dtype=bool)
        is_target[sample.target_ids] = True
        tgt = _coverage(masks[is_target].any(axis=0), size, cell)
        dis = _coverage(masks[~is_target].any(axis=0), size, cell) if (~is_target).any() else np.zeros(g * g)
        referred[instance] = (tgt > dis)[instance].astype(np.int8)
    return CellData(feats.astype(np.float32), instance, referred)


def collect(config: WorldConfig, split: str, n: int, size: int = 112, cell: int = 28) -> CellData:
    """Cell data of the first `n` samples of `split`."""
    parts = [cell_data(s, size, cell) for s in generate_split(config, split, n)]
    return CellData(
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.instance for p in parts]),
        np.concatenate([p.referred for p in parts]),
    )


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-2, max_iter: int = 300
) -> Callable[[np.ndarray], np.ndarray]:
    """Full-batch L-BFGS logistic regression on standardised features; returns a predict(x) -> bool function."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y.astype(np.float32))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_np, b_np = w.detach().numpy(), float(b.detach())

    def predict(xn: np.ndarray) -> np.ndarray:
        return ((xn - mean) / std) @ w_np + b_np > 0

    return predict


def _evaluate(
    name: str, world: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, l2: float
) -> dict:
    predict = fit_logistic(xtr, ytr, l2)
    majority = bool(ytr.mean() >= 0.5)
    return {
        "world": world,
        "probe": name,
        "train_cells": len(ytr),
        "test_cells": len(yte),
        "positive_rate": float(yte.mean()),
        "majority_acc": float((yte == majority).mean()),
        "probe_train_acc": float((predict(xtr) == ytr).mean()),
        "probe_acc": float((predict(xte) == yte).mean()),
    }


def run_contrast_probe(
    config: WorldConfig | None = None,
    n_train: int = 1000,
    n_test: int = 300,
    cell: int = 28,
    size: int = 112,
    l2: float = 1e-2,
    worlds: tuple[str, ...] = ("default", "plain"),
) -> pd.DataFrame:
    """Probe accuracies (train split -> test split) on each world, beside the majority-class baseline."""
    base = config or WorldConfig()
    rows = []
    for world in worlds:
        cfg = replace(base, plain=(world == "plain"))
        logger.info("world %s: collecting %d train and %d test images", world, n_train, n_test)
        tr = collect(cfg, "train", n_train, size, cell)
        te = collect(cfg, "test", n_test, size, cell)
        rows.append(
            _evaluate("instance_vs_background", world, tr.features, tr.instance, te.features, te.instance, l2)
        )
        mtr, mte = tr.referred >= 0, te.referred >= 0
        rows.append(
            _evaluate(
                "referred_vs_distractor",
                world,
                tr.features[mtr],
                tr.referred[mtr] == 1,
                te.features[mte],
                te.referred[mte] == 1,
                l2,
            )
        )
    return pd.DataFrame(rows)


@dataclass
class ContrastProbeConfig:
    """Pixel-contrast baseline: linear probes on raw cell pixels (instance vs background, referred vs
    distractor) on the default textured world and on the plain-background control."""

    n_train: int = 1000
    """Training images per world (train split)."""
    n_test: int = 300
    """Held-out images per world (test split)."""
    cell: int = 28
    """Cell size in pixels after the resize: 28 = the tiny Qwen token grid, 14 = the tiny LLaVA grid."""
    size: int = 112
    """Side of the square the images are resized to."""
    l2: float = 1e-2
    """L2 penalty of the logistic regression."""
    seed: int = 0
    """Base seed of the world."""
    worlds: str = "default,plain"
    """Comma-separated subset of default,plain."""
    out: str = ""
    """Also write the table to this CSV file (atomically) when set."""


def run_contrast_baseline(cfg: ContrastProbeConfig) -> pd.DataFrame:
    """Run the probes of `cfg`, print the table, optionally write it; returns it."""
    if cfg.cell not in (14, 28) or cfg.size % cfg.cell:
        raise ValueError(f"cell must be 14 or 28 and divide size; got cell {cfg.cell}, size {cfg.size}")
    worlds = tuple(w.strip() for w in cfg.worlds.split(",") if w.strip())
    unknown = set(worlds) - {"default", "plain"}
    if unknown or not worlds:
        raise ValueError(f"worlds must be a subset of default,plain; got {cfg.worlds!r}")
    table = run_contrast_probe(
        WorldConfig(seed=cfg.seed), cfg.n_train, cfg.n_test, cfg.cell, cfg.size, cfg.l2, worlds
    )
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, out)
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """`python -m segcompass.world.contrast_probe` (the same as `segcompass contrast-baseline`)."""
    import simple_parsing

    parser = simple_parsing.ArgumentParser(
        prog="python -m segcompass.world.contrast_probe",
        add_option_string_dash_variants=simple_parsing.DashVariant.DASH,
    )
    parser.add_arguments(ContrastProbeConfig, dest="config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_contrast_baseline(args.config)


if __name__ == "__main__":
    main()
