"""Stage 2 can train the merger alone (LLaVA's first stage): the cache's live merger gives the tower's
merged tokens exactly, and training through it moves the merger and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segcompass.backbones import build_tiny
from segcompass.pretrain.dialogue import Dialogue, describe_turn
from segcompass.pretrain.language import FeatureCache, train_dialogues
from segcompass.pretrain.optim import Schedule
from segcompass.pretrain.pool import ProcessorGrid, build_pool
from segcompass.world import WorldConfig


@pytest.fixture(scope="module")
def setup(toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    pool = build_pool(WorldConfig(), "train", 3, ProcessorGrid.of(backbone.processor.image_processor))
    return backbone, pool


def test_live_merger_gives_the_towers_merged_tokens(setup):
    backbone, pool = setup
    frozen = FeatureCache(backbone, pool).get([2, 0, 1])
    live = FeatureCache(backbone, pool, live_merger=True).get([2, 0, 1])
    for a, b in zip(frozen, live, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)
    assert live[0].requires_grad and not frozen[0].requires_grad


def test_training_the_merger_moves_it_and_nothing_else(setup, toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    _, pool = setup
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}

    def make(scene: int, rng: np.random.Generator) -> Dialogue:
        return Dialogue(scene, (describe_turn(pool[scene].sample),))

    cache = FeatureCache(backbone, pool, live_merger=True)
    train_dialogues(
        backbone, pool, cache, Schedule(steps=2, batch_size=2), make, 0, "x", False, trains="merger"
    )
    after = backbone.model.state_dict()
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    assert moved and all(".merger." in k for k in moved), sorted(moved)[:5]
    with pytest.raises(ValueError, match="live_merger"):
        train_dialogues(
            backbone, pool, FeatureCache(backbone, pool), Schedule(1, 1), make, 0, "x", False, trains="merger"
        )
    with pytest.raises(ValueError, match="'language' or 'merger'"):
        train_dialogues(backbone, pool, cache, Schedule(1, 1), make, 0, "x", False, trains="tower")
