"""Stage 2 by regression: the merger's last layer is the ridge solution from its hidden layer to the oracle
tokens (the normal equations hold on the pool), it lowers the error, and nothing else moves."""

from __future__ import annotations

import pytest
import torch

from segcompass.backbones import build_tiny
from segcompass.pretrain.align import fit_merger_readout, merger_hidden
from segcompass.pretrain.language import FeatureCache
from segcompass.pretrain.object_vectors import ObjectVectorCache
from segcompass.pretrain.pool import ScenePool


@pytest.fixture(scope="module")
def pool(toy_vlm_pool):
    return toy_vlm_pool


def test_the_fitted_merger_solves_the_ridge_normal_equations(pool, toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    ridge = 1e-3
    fit = fit_merger_readout(backbone, pool, ridge=ridge)
    after = backbone.model.state_dict()
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    assert moved == {"model.visual.merger.mlp.2.weight", "model.visual.merger.mlp.2.bias"}

    indices = list(range(len(pool)))
    live = FeatureCache(backbone, pool, live_merger=True)
    tokens = torch.cat(
        FeatureCache(backbone, pool).get(indices)
    ).double()  # the merger's output, as stage 3 sees it
    oracle = torch.cat(ObjectVectorCache(backbone, pool).get(indices)).double()
    hidden = torch.cat([merger_hidden(backbone, p) for p in live.merger_inputs(indices)]).double()
    residual = tokens - oracle  # [tokens, D]
    weight = backbone.model.model.visual.merger.mlp[2].weight.double().T  # [H, D]
    # ∂/∂W of ‖XW + b − T‖² + ridge·n·‖W‖² is 0, and ∂/∂b is 0: the residual sums to 0.
    gradient = hidden.T @ residual + ridge * len(hidden) * weight
    assert gradient.abs().max() < 1e-3 * (hidden.T @ oracle).abs().max()
    assert residual.sum(0).abs().max() < 1e-3 * oracle.abs().sum(0).max()
    relative = float(residual.pow(2).sum() / oracle.pow(2).sum())
    assert fit.relative_error == pytest.approx(relative, rel=1e-3)
    assert fit.relative_error < 0.5 * fit.relative_error_before and fit.tokens == len(tokens)


def test_an_empty_pool_is_refused(toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    with pytest.raises(ValueError, match="at least one scene"):
        fit_merger_readout(backbone, ScenePool("train", []))


def test_only_a_live_merger_cache_keeps_the_mergers_inputs(pool, toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    with pytest.raises(ValueError, match="live_merger"):
        FeatureCache(backbone, pool).merger_inputs([0])
