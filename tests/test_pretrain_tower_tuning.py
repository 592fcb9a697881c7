"""The tower tuned through the frozen language model: the live tokens are the cached ones, the gradient
reaches the tower and merger and nothing else, the oracle regression is the fitted one, and a pool made at
other image sizes is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segcompass.backbones import build_tiny
from segcompass.pretrain.dialogue import Dialogue
from segcompass.pretrain.grounding import Grounding
from segcompass.pretrain.language import FeatureCache
from segcompass.pretrain.object_phase import ObjectPhase
from segcompass.pretrain.object_vectors import ObjectVectorCache
from segcompass.pretrain.optim import Schedule
from segcompass.pretrain.pool import set_image_pixels
from segcompass.pretrain.text import recall_turns
from segcompass.pretrain.tower_tuning import (
    TowerFeatures,
    TowerTuning,
    relative_token_error,
    tune_tower,
)


@pytest.fixture(scope="module")
def pool(toy_vlm_pool):
    return toy_vlm_pool


def test_live_tokens_equal_the_frozen_towers_cached_tokens(pool, toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    indices = [2, 0, 3]
    live = TowerFeatures(backbone, pool).get(indices)
    cached = FeatureCache(backbone, pool).get(indices)
    for a, b, i in zip(live, cached, indices, strict=True):
        assert a.shape == (pool[i].grid[0] * pool[i].grid[1], b.shape[1])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert live[0].requires_grad


def test_tuning_moves_the_tower_and_merger_only_and_lowers_the_oracle_error(pool, toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    indices = list(range(len(pool)))
    oracle = ObjectVectorCache(backbone, pool)

    def error() -> float:
        with torch.no_grad():
            return float(relative_token_error(FeatureCache(backbone, pool).get(indices), oracle.get(indices)))

    start = error()
    phase = ObjectPhase(layout="image", questions=2, kinds=("colour", "shape"))

    def make(scene: int, rng: np.random.Generator) -> Dialogue:
        return Dialogue(scene, recall_turns(pool[scene].sample, rng, phase))

    schedule = Schedule(steps=12, batch_size=4, lr=3e-3, warmup_fraction=0.0)
    record = tune_tower(
        backbone,
        pool,
        schedule,
        make,
        0,
        Grounding(weight=1.0, layers=(1,)),
        oracle_weight=1.0,
        progress=False,
    )
    assert set(record.parts[0]) == {"lm", "grounding", "oracle"}
    after = backbone.model.state_dict()
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("model.visual.") for k in moved)
    assert any(k.startswith("model.visual.blocks.") for k in moved)  # the tower, not only the merger
    assert any(k.startswith("model.visual.merger.") for k in moved)
    assert error() < 0.9 * start
    assert not any(p.requires_grad for p in backbone.model.parameters())  # left frozen


def test_relative_token_error_on_a_hand_case():
    tokens = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0], [2.0, 2.0]])]
    oracle = [torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0], [2.0, 0.0]])]
    # residual² = 1 + 0 + 4 = 5; ‖oracle‖² = 2 + 0 + 4 = 6
    assert float(relative_token_error(tokens, oracle)) == pytest.approx(5 / 6)


def test_tuning_asks_questions_only_and_a_negative_oracle_weight_is_refused():
    with pytest.raises(ValueError, match="questions only"):
        TowerTuning(kinds=("colour", "grounded_format"))
    with pytest.raises(ValueError, match="oracle_weight"):
        TowerTuning(oracle_weight=-1.0)
    assert TowerTuning().turns().kinds == ("colour", "shape", "size", "position", "count")


def test_a_pool_at_another_image_size_is_refused(pool, toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    set_image_pixels(backbone, 224 * 224, 224 * 224)
    with pytest.raises(ValueError, match="set_image_pixels"):
        TowerFeatures(backbone, pool).get([0])
