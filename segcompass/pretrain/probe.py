"""Linear probes of image tokens: what a stage's tokens make linearly readable (held-out accuracy).

The probe is multinomial logistic regression on standardised features (full-batch L-BFGS, small L2),
fitted on one pool's tokens and scored on another's, beside the majority-class rate of the held-out labels.
Token labels follow `labels.covering_labels`: the object covering at least half of the cell, or the
background when it covers at least half; mixed cells are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segcompass.backbones import Backbone

from .labels import covering_labels
from .language import FeatureCache
from .pool import ScenePool

PROBE_TARGETS: tuple[str, ...] = ("colour", "shape", "object")
"""Token probes: the covering object's colour, its shape (object cells only), object vs background."""


@dataclass
class ProbeResult:
    """Held-out accuracy of a linear probe beside the majority-class rate."""

    accuracy: float
    majority: float
    n_train: int
    n_test: int


def linear_probe(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> ProbeResult:
    """Fit logistic regression on (train_x [N, D], train_y [N]) and score it on the test pair."""
    classes = np.unique(np.concatenate([train_y, test_y]))
    index = {c: i for i, c in enumerate(classes)}
    ytr = torch.tensor([index[c] for c in train_y])
    yte = np.asarray([index[c] for c in test_y])
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    linear = torch.nn.Linear(xtr.shape[1], len(classes))
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xtr), ytr) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        pred = linear(xte).argmax(-1).numpy()
    majority = float(np.bincount(yte).max() / len(yte)) if len(yte) else float("nan")
    return ProbeResult(float((pred == yte).mean()), majority, len(ytr), len(yte))


def token_labels(pool: ScenePool, target: str) -> list[np.ndarray]:
    """Per scene, int labels [cells] for `target` (−2: left out)."""
    out = []
    for s in pool.scenes:
        if target == "object":
            lab = covering_labels(s.coverage, np.zeros(len(s.attributes), dtype=np.int64))
            out.append(np.where(lab == -2, -2, (lab >= 0).astype(np.int64)))
        else:
            column = {"colour": 0, "shape": 1}[target]
            lab = covering_labels(s.coverage, s.attributes[:, column])
            out.append(np.where(lab < 0, -2, lab))  # object cells only
    return out


def probe_features(
    features: list[torch.Tensor], pool: ScenePool, target: str
) -> tuple[torch.Tensor, np.ndarray]:
    """Stack the labelled tokens of `pool` (features: [cells, D] per scene) for `target`."""
    xs, ys = [], []
    for feats, lab in zip(features, token_labels(pool, target), strict=True):
        keep = lab != -2
        xs.append(feats[torch.from_numpy(keep)].float())
        ys.append(lab[keep])
    return torch.cat(xs), np.concatenate(ys)


@torch.no_grad()
def hook_layer_tokens(
    backbone: Backbone, pool: ScenePool, prompt: str = "Describe the image.", batch_size: int = 16
) -> list[torch.Tensor]:
    """Hook-layer states [cells, D] at each scene's image tokens (raster order), image before `prompt`."""
    backbone.model.eval()
    out: list[torch.Tensor] = []
    for start in range(0, len(pool), batch_size):
        scenes = pool.scenes[start : start + batch_size]
        batch = backbone.prepare([s.sample.image for s in scenes], [prompt] * len(scenes))
        states = backbone.model(**batch.inputs, output_hidden_states=True).hidden_states[backbone.hook_layer]
        for b, s in enumerate(scenes):
            rc = batch.image_rc[b]  # [T, 2], −1 off image tokens
            pos = torch.nonzero(rc[:, 0] >= 0).squeeze(-1)
            order = torch.argsort(rc[pos, 0] * s.grid[1] + rc[pos, 1])
            out.append(states[b, pos[order]].float())
    return out


def token_probes(
    train_features: list[torch.Tensor],
    train_pool: ScenePool,
    test_features: list[torch.Tensor],
    test_pool: ScenePool,
) -> dict[str, ProbeResult]:
    """The three `PROBE_TARGETS` probes, fitted on one pool and scored on the other."""
    results = {}
    for target in PROBE_TARGETS:
        xtr, ytr = probe_features(train_features, train_pool, target)
        xte, yte = probe_features(test_features, test_pool, target)
        results[target] = linear_probe(xtr, ytr, xte, yte)
    return results


def merged_tokens(backbone: Backbone, pool: ScenePool) -> list[torch.Tensor]:
    """The vision tower's merged tokens of every scene of `pool` (stage-1 output)."""
    return FeatureCache(backbone, pool).get(list(range(len(pool))))
