"""Multi-turn dialogues: labels cover exactly the assistant turns; cached image features equal the tower's;
the vision objectives' gradients reach the tower and the read-out heads, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segcompass.backbones import build_tiny
from segcompass.backbones.family import TinySpec
from segcompass.pretrain.dialogue import Dialogue, Turn, qa_dialogue
from segcompass.pretrain.evaluate import named_referent
from segcompass.pretrain.language import FeatureCache, encode_dialogues, lm_logits
from segcompass.pretrain.pool import build_pool
from segcompass.pretrain.stack import ProcessorGrid
from segcompass.pretrain.vision import VisionHeads, VisionObjective, image_tokens, vision_batch, vision_loss
from segcompass.world import WorldConfig

SPEC = TinySpec(
    hidden_size=64,
    num_layers=2,
    intermediate_size=128,
    vision_hidden_size=32,
    vision_layers=2,
    image_size=112,
    min_pixels=112 * 112,
    hook_layer=1,
    extra={"vision_config": {"fullatt_block_indexes": [0, 1]}},
)


@pytest.fixture(scope="module")
def setup():
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=SPEC)
    pool = build_pool(WorldConfig(), "train", 3, ProcessorGrid.of(backbone.processor.image_processor))
    return backbone, pool


def test_labels_cover_every_answer_and_end_of_turn_only(setup):
    backbone, pool = setup
    turns = (Turn("colour", "What colour is the star?", "red"), Turn("count", "How many circles?", "2"))
    batch = encode_dialogues(backbone, pool, [Dialogue(0, turns), Dialogue(1, turns[:1])])
    ids = batch.prepared.inputs["input_ids"]
    for row, expected in ((0, "red<|im_end|>2<|im_end|>"), (1, "red<|im_end|>")):
        kept = ids[row][batch.labels[row] != -100]
        assert backbone.tokenizer.decode(kept) == expected
    assert (batch.labels[batch.prepared.inputs["attention_mask"] == 0] == -100).all()


def test_dialogues_are_deterministic_and_end_with_the_format_turn(setup):
    _, pool = setup
    make = lambda seed: qa_dialogue(0, pool[0].sample, np.random.default_rng(seed), 4, 1.0, 3)  # noqa: E731
    a, b = make(7), make(7)
    assert a == b
    assert a.turns[-1].kind == "format" and a.turns[-1].answer.endswith("<REF_POS>" * 3)
    assert 1 <= len(a.turns) - 1 <= 4
    assert all(t.answer in t.candidates for t in a.turns[:-1])


def test_cached_features_give_the_same_logits_as_the_pixels(setup):
    backbone, pool = setup
    batch = encode_dialogues(
        backbone,
        pool,
        [qa_dialogue(i, pool[i].sample, np.random.default_rng(i), 3, 1.0, 2) for i in range(3)],
    )
    with torch.no_grad():
        cached = lm_logits(backbone, batch, FeatureCache(backbone, pool))
        direct = backbone.model(**batch.prepared.inputs).logits
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)


def test_vision_objective_trains_the_tower_and_heads_only(setup):
    backbone, pool = setup
    heads = VisionHeads(backbone.hidden_size)
    scenes = list(pool.scenes)
    loss = vision_loss(heads, image_tokens(backbone, scenes), vision_batch(scenes), VisionObjective())
    backbone.model.zero_grad()
    loss.total.backward()
    visual = backbone.model.model.visual
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    assert visual.patch_embed.proj.weight.grad.abs().sum() > 0
    assert visual.merger.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.model.model.language_model.parameters())
    assert set(loss.parts) == {"token", "object", "image", "offset", "outline", "silhouette"}


def test_named_referent_is_the_last_object_phrase():
    text = "Diamonds: the small red diamond at the left and the large blue diamond at the top. So the target is the large blue diamond at the top."
    assert named_referent(text) == named_referent("the blue diamond")
    assert named_referent(text).colour == "blue" and named_referent(text).shape == "diamond"
    assert named_referent("nothing here").colour is None
