"""Stage 2 by regression: the merger's last layer fitted so the image tokens equal the oracle tokens.

After stage 0's object phases (`object_phase.py`) the language model reads the oracle tokens of an image —
each token the vector of the object covering it, 0 on the background (`object_vectors.py`). What a real
tower gives it should look like that. With the tower frozen, the merger's output is a linear function of
its last hidden layer, so the best such output is a ridge regression: one linear solve on the train
scenes' tokens, seconds instead of an alignment run (results/warmup.md, session (5): relative error 0.66
and image shape 0.35 with a tower whose token shape probe reads 0.53).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from segcompass.backbones import Backbone

from .language import FeatureCache
from .object_vectors import ObjectVectorCache
from .pool import ScenePool


class ReadoutFit(NamedTuple):
    """What `fit_merger_readout` did."""

    relative_error: float
    """‖tokens − oracle‖² / ‖oracle‖² over the pool's image tokens after the fit."""
    relative_error_before: float
    """The same with the merger as it was."""
    tokens: int
    """Image tokens the regression was fitted on."""


def merger_hidden(backbone: Backbone, patches: torch.Tensor) -> torch.Tensor:
    """[cells, 4, C] (each token's 2 × 2 patch states) → the merger's last hidden layer [cells, H] (the input of
    its last linear layer)."""
    merger = backbone.model.model.visual.merger
    hidden = merger.ln_q(patches).view(-1, merger.hidden_size)
    return merger.mlp[:-1](hidden)


@torch.no_grad()
def fit_merger_readout(backbone: Backbone, pool: ScenePool, ridge: float = 1e-2) -> ReadoutFit:
    """Set the merger's last linear layer (weight and bias) to the ridge solution that maps its hidden layer
    to the pool's oracle tokens under the backbone's current embeddings; the tower stays as it is.

    `ridge` is per token: the penalty is `ridge · tokens · ‖W‖²` (the bias is not penalised). The normal
    equations are accumulated scene by scene (memory: the tower's cached outputs, an [H + 1]² and an
    [H + 1, D] sum)."""
    if len(pool) == 0:
        raise ValueError("fitting the merger needs at least one scene")
    features = FeatureCache(backbone, pool, live_merger=True)
    oracle = ObjectVectorCache(backbone, pool)
    last = backbone.model.model.visual.merger.mlp[-1]
    width = last.in_features + 1
    xtx = torch.zeros(width, width, dtype=torch.float64)
    xty = torch.zeros(width, last.out_features, dtype=torch.float64)
    tokens, target_norm, error_before = 0, 0.0, 0.0
    for i, patches in enumerate(features.merger_inputs(list(range(len(pool))))):  # tower once, batched
        hidden = merger_hidden(backbone, patches)  # [cells, H]
        before = last(hidden).double()  # the merger's output as it was, [cells, D]
        hidden = hidden.double()
        x = torch.cat([hidden, torch.ones(len(hidden), 1, dtype=hidden.dtype)], 1)  # [cells, H + 1]
        target = oracle.get([i])[0].double()  # [cells, D]
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"the merger's hidden layer is not finite on scene {i}")
        xtx += x.T @ x
        xty += x.T @ target
        tokens += len(x)
        target_norm += float(target.pow(2).sum())
        error_before += float((before - target).pow(2).sum())
    penalty = ridge * tokens * torch.eye(width, dtype=torch.float64)
    penalty[-1, -1] = 0.0
    solution = torch.linalg.solve(xtx + penalty, xty)  # [H + 1, D]
    last.weight.copy_(solution[:-1].T.to(last.weight.dtype))
    last.bias.copy_(solution[-1].to(last.bias.dtype))
    # ‖XW − T‖² = tr(WᵀXᵀXW) − 2·tr(WᵀXᵀT) + ‖T‖², from the sums already accumulated
    error_after = float((solution * (xtx @ solution)).sum() - 2 * (solution * xty).sum()) + target_norm
    return ReadoutFit(error_after / target_norm, error_before / target_norm, tokens)
