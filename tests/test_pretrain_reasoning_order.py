"""`StackConfig.reasoning_order`: stages 0b and 3 can teach the reasoning's listings in reading order."""

from __future__ import annotations

import pytest

from segcompass.pretrain.config import StackConfig
from segcompass.pretrain.pool import scene_pool
from segcompass.world import WorldConfig, generate_sample
from segcompass.world.generate import with_listing_order

PIXELS = (56 * 56, 84 * 84)


def test_the_order_is_keyed_in_stages_0b_and_3_only_and_survives_a_round_trip() -> None:
    default, read = StackConfig(), StackConfig(reasoning_order="reading")
    # the world's order: every committed key stays as it was
    assert "reasoning_order" not in str(default.instruct_stage())
    assert read.text_stage() == default.text_stage() and read.tower_stage() == default.tower_stage()
    assert read.reasoning_stage() != default.reasoning_stage()
    assert read.instruct_stage() != default.instruct_stage()
    assert StackConfig.from_stage(read.instruct_stage()).reasoning_order == "reading"
    assert StackConfig.from_stage(read.reasoning_stage()).reasoning_order == "reading"
    # stage 0 is built from its own config, which keeps the world's order
    assert StackConfig.from_stage(read.text_stage()).reasoning_order == "paint"
    with pytest.raises(ValueError, match="reasoning_order must be one of"):
        StackConfig(reasoning_order="size")


def test_the_pool_of_a_reading_order_stack_carries_the_relisted_reasoning() -> None:
    world = {"min_objects": 4, "max_objects": 6}
    paint = scene_pool(StackConfig(world=world, train_scenes=12), "train", PIXELS)
    read = scene_pool(StackConfig(world=world, train_scenes=12, reasoning_order="reading"), "train", PIXELS)
    changed = 0
    for i, (a, b) in enumerate(zip(paint.scenes, read.scenes, strict=True)):
        sample = generate_sample(WorldConfig(**world), "train", i)
        assert a.sample.reasoning == sample.reasoning
        assert b.sample.reasoning == with_listing_order(sample, "reading").reasoning
        assert b.coverage is a.coverage and b.sample.instruction == a.sample.instruction  # labels shared
        changed += a.sample.reasoning != b.sample.reasoning
    assert changed > 0
