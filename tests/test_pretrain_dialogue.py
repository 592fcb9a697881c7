"""Multi-turn dialogues: labels cover exactly the assistant turns; cached image features equal the tower's;
the vision objectives' gradients reach the tower and the read-out heads, and nothing else."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from segcompass.backbones import build_tiny
from segcompass.pretrain.dialogue import Dialogue, Turn, continuation, qa_dialogue
from segcompass.pretrain.evaluate import named_referent
from segcompass.pretrain.labels import MAX_COUNT, NUM_CLASSES
from segcompass.pretrain.language import FeatureCache, encode_dialogues, lm_logits
from segcompass.pretrain.pool import build_pool
from segcompass.pretrain.stack import ProcessorGrid
from segcompass.pretrain.vision import (
    PixelCache,
    VisionBatch,
    VisionHeads,
    VisionObjective,
    _token_count_loss,
    image_tokens,
    vision_batch,
    vision_loss,
)
from segcompass.world import WorldConfig


@pytest.fixture(scope="module")
def setup(toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    pool = build_pool(WorldConfig(), "train", 3, ProcessorGrid.of(backbone.processor.image_processor))
    return backbone, pool


def test_labels_cover_every_answer_and_end_of_turn_only(setup):
    backbone, pool = setup
    turns = (Turn("colour", "What colour is the star?", "red"), Turn("count", "How many circles?", "2"))
    batch = encode_dialogues(backbone, pool, [Dialogue(0, turns), Dialogue(1, turns[:1])])
    ids = batch.inputs["input_ids"]
    for row, expected in ((0, "red<|im_end|>2<|im_end|>"), (1, "red<|im_end|>")):
        kept = ids[row][batch.labels[row] != -100]
        assert backbone.tokenizer.decode(kept) == expected
    assert (batch.labels[batch.inputs["attention_mask"] == 0] == -100).all()


@pytest.fixture(scope="module")
def encoded(setup):
    """Three dialogues encoded from text only, and the same dialogues through the processor with pixels."""
    backbone, pool = setup
    dialogues = [qa_dialogue(i, pool[i].sample, np.random.default_rng(i), 3, 1.0, 2) for i in range(3)]
    prepared = backbone.prepare(
        [pool[d.scene].sample.image for d in dialogues],
        [d.turns[0].question for d in dialogues],
        responses=[continuation(backbone, d.turns) for d in dialogues],
    )
    return encode_dialogues(backbone, pool, dialogues), prepared


def test_text_only_encoding_equals_the_processor_with_pixels(encoded):
    batch, prepared = encoded
    # Every model input but the pixels: a missing key (mm_token_type_ids) changes the rotary positions.
    assert set(batch.inputs) == set(prepared.inputs) - {"pixel_values"}
    for key in batch.inputs:
        torch.testing.assert_close(batch.inputs[key], prepared.inputs[key], msg=key)


def test_dialogues_are_deterministic_and_end_with_the_format_turn(setup):
    _, pool = setup
    make = lambda seed: qa_dialogue(0, pool[0].sample, np.random.default_rng(seed), 4, 1.0, 3)  # noqa: E731
    a, b = make(7), make(7)
    assert a == b
    assert a.turns[-1].kind == "format" and a.turns[-1].answer.endswith("<REF_POS>" * 3)
    assert 1 <= len(a.turns) - 1 <= 4
    assert all(t.answer in t.candidates for t in a.turns[:-1])


def test_the_format_turn_comes_first_at_the_rate_asked_and_last_otherwise(setup):
    _, pool = setup
    sample = pool[0].sample

    def places(format_first: float) -> list[int]:
        dialogues = [
            qa_dialogue(0, sample, np.random.default_rng(s), 3, 1.0, 2, format_first) for s in range(200)
        ]
        return [[t.kind for t in d.turns].index("format") for d in dialogues]

    assert set(places(1.0)) == {0}  # the instruction as the first prompt with the image
    last = [qa_dialogue(0, sample, np.random.default_rng(s), 3, 1.0, 2) for s in range(20)]
    assert all(d.turns[-1].kind == "format" for d in last)
    # `format_first=0` draws nothing more: the same dialogues as before the option existed
    assert last == [qa_dialogue(0, sample, np.random.default_rng(s), 3, 1.0, 2, 0.0) for s in range(20)]
    first = np.mean([p == 0 for p in places(0.5)])
    assert 0.38 < first < 0.62  # 200 draws at 0.5: the bounds are > 3 standard deviations out
    half = [qa_dialogue(0, sample, np.random.default_rng(s), 3, 1.0, 2, 0.5) for s in range(200)]
    assert all(sum(t.kind == "format" for t in d.turns) == 1 for d in half)


def test_cached_features_give_the_same_logits_as_the_processor_and_pixels(setup, encoded):
    """The training path (text-only encoding + cached image features) against the model fed what the
    processor gives: same logits, so training sees the 3-D rotary positions that generation uses."""
    backbone, pool = setup
    batch, prepared = encoded
    with torch.no_grad():
        cached = lm_logits(backbone, batch, FeatureCache(backbone, pool))
        direct = backbone.model(**prepared.inputs).logits
        flat = {k: v for k, v in prepared.inputs.items() if k != "mm_token_type_ids"}
        one_d = backbone.model(**flat).logits  # what the encoding gave before it carried the type ids
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)
    assert (one_d - direct).abs().max() > 1e-3  # the check above can tell the two position schemes apart


def test_pixel_cache_gives_the_processors_patches_in_the_asked_order(setup):
    backbone, pool = setup
    cache = PixelCache(backbone, pool)
    cache.batch([1])  # cached before the batch that reuses it
    pixels, grid = cache.batch([2, 1, 2])
    direct = backbone.processor.image_processor(
        images=[pool[i].sample.image for i in (2, 1, 2)], return_tensors="pt"
    )
    torch.testing.assert_close(pixels, direct["pixel_values"])
    torch.testing.assert_close(grid, direct["image_grid_thw"])
    tokens = image_tokens(backbone, [pool[i] for i in (2, 1, 2)], (pixels, grid))
    torch.testing.assert_close(tokens, image_tokens(backbone, [pool[i] for i in (2, 1, 2)]))


def test_vision_objective_trains_the_tower_and_heads_only(setup):
    backbone, pool = setup
    heads = VisionHeads(backbone.hidden_size, token_counts=True)
    scenes = list(pool.scenes)
    objective = VisionObjective(token_object_weight=1.0, token_count_weight=1.0)  # every head in use
    loss = vision_loss(heads, image_tokens(backbone, scenes), vision_batch(scenes), objective)
    backbone.model.zero_grad()
    loss.total.backward()
    visual = backbone.model.model.visual
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    assert visual.patch_embed.proj.weight.grad.abs().sum() > 0
    assert visual.merger.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.model.model.language_model.parameters())
    assert set(loss.parts) == {
        "token",
        "object",
        "image",
        "offset",
        "outline",
        "silhouette",
        "token_object",
        "token_count",
    }
    # off, the count read-out is not built, so the other read-outs draw the same initial weights as before
    torch.manual_seed(0)
    plain = VisionHeads(8)
    torch.manual_seed(0)
    counting = VisionHeads(8, token_counts=True)
    assert plain.token_count is None
    for (name, a), (other, b) in zip(plain.named_parameters(), counting.named_parameters(), strict=False):
        assert name == other and torch.equal(a, b)


def test_the_token_count_target_is_how_many_objects_share_the_tokens_colour_and_kind():
    """Image 0: a red circle, a red square and a blue circle; image 1: a green star. Each covered token's
    targets (objects of its colour, of its kind): red circle (2, 2), red square (2, 1), blue circle (1, 2),
    green star (1, 1); background tokens have none."""
    red, blue, green = 0, 1, 2
    circle, square, star = 0, 1, 2
    n_colours = NUM_CLASSES["colour"]
    counts = torch.zeros(2, n_colours + NUM_CLASSES["shape"], dtype=torch.long)
    counts[0, [red, blue]] = torch.tensor([2, 1])
    counts[0, n_colours + circle], counts[0, n_colours + square] = 2, 1
    counts[1, green], counts[1, n_colours + star] = 1, 1
    token_objects = torch.full((6, 4), -100, dtype=torch.long)
    token_objects[[0, 1, 3, 4], :2] = torch.tensor(
        [[red, circle], [red, square], [blue, circle], [green, star]]
    )
    batch = VisionBatch(
        token_targets={},
        object_weights=torch.zeros(0, 6),
        object_labels=torch.zeros(0, 4, dtype=torch.long),
        image_index=torch.tensor([0, 0, 0, 0, 1, 1]),
        counts=counts,
        offsets=torch.zeros(6, 3),
        covered=torch.zeros(6, dtype=torch.bool),
        silhouettes=torch.zeros(0, 64),
        outlines=torch.zeros(6, 16),
        token_objects=token_objects,
    )
    heads = VisionHeads(8, token_counts=True).requires_grad_(False)
    tokens = torch.eye(6, 8)  # token i is the i-th unit vector
    with torch.no_grad():
        heads.token_count.weight.zero_()
        heads.token_count.bias.zero_()
    assert float(_token_count_loss(heads, tokens, batch)) == pytest.approx(math.log(MAX_COUNT + 1))
    expected = {0: (2, 2), 1: (2, 1), 3: (1, 2), 4: (1, 1)}
    with torch.no_grad():
        for cell, (by_colour, by_kind) in expected.items():
            heads.token_count.weight[by_colour, cell] = 30.0
            heads.token_count.weight[MAX_COUNT + 1 + by_kind, cell] = 30.0
    assert float(_token_count_loss(heads, tokens, batch)) < 1e-6
    # the same read-out scored against colour and kind swapped is far off
    swapped = dataclasses.replace(batch, token_objects=token_objects[:, [1, 0, 2, 3]])
    assert float(_token_count_loss(heads, tokens, swapped)) > 1.0
    with pytest.raises(ValueError, match="token_counts=True"):
        _token_count_loss(VisionHeads(8), tokens, batch)


def test_named_referent_is_the_last_object_phrase():
    text = "Diamonds: the small red diamond at the left and the large blue diamond at the top. So the target is the large blue diamond at the top."
    assert named_referent(text) == named_referent("the blue diamond")
    assert named_referent(text).colour == "blue" and named_referent(text).shape == "diamond"
    assert named_referent("nothing here").colour is None


def test_the_reasoning_table_scores_canned_responses_by_hand(setup, monkeypatch):
    """`reasoning_outputs` on canned greedy responses: one names the referent in the format, one names
    another object, one breaks the format; `reasoning_accuracy` aggregates that table."""
    from segcompass.pretrain import evaluate
    from segcompass.pretrain.pool import ScenePool

    backbone, _ = setup
    pool = build_pool(WorldConfig(), "val", 12, ProcessorGrid.of(backbone.processor.image_processor))
    single = [i for i, s in enumerate(pool.scenes) if len(s.sample.target_ids) == 1][:3]
    assert len(single) == 3
    pool = ScenePool("val", [pool.scenes[i] for i in single])
    targets = [s.sample.scene.objects[s.sample.target_ids[0]] for s in pool.scenes]
    other_shape = next(sh for sh in ("circle", "square", "star") if sh != targets[1].shape)
    opening = evaluate.reasoning_opening(pool.scenes[0].sample.reasoning)
    assert opening and ":" not in opening and pool.scenes[0].sample.reasoning.startswith(opening + ":")
    canned = [
        f"<think>{opening}: so the target is the {targets[0].colour} {targets[0].shape}.</think>"
        "<REF_POS><REF_POS>",
        f"<think>So the target is the {targets[1].colour} {other_shape}.</think><REF_POS><REF_POS>",
        f"<think>the {targets[2].colour} {targets[2].shape}</think><REF_POS>",
    ]
    asked = []

    def generate(backbone, examples, max_new_tokens, batch_size):
        asked.extend(e.prompt for e in examples)
        return canned[len(asked) - len(examples) : len(asked)]

    monkeypatch.setattr(evaluate, "generate_responses", generate)
    table = evaluate.reasoning_outputs(backbone, pool, num_slots=2)
    assert asked == [s.sample.instruction for s in pool.scenes]
    assert table.columns.tolist() == list(evaluate.REASONING_COLUMNS)
    assert table.referent.tolist() == [True, False, True] and table.format.tolist() == [True, True, False]
    assert table.output.tolist() == canned and table.scene.tolist() == [0, 1, 2]
    assert table.opening.tolist()[0] and not table.opening.tolist()[1]
    rows = {r["measure"]: r for r in evaluate.reasoning_accuracy(backbone, pool, "m", 2, outputs=table)}
    assert rows["reasoning_referent"]["accuracy"] == pytest.approx(2 / 3)
    assert rows["format"]["accuracy"] == pytest.approx(2 / 3)
    assert rows["reasoning_opening"]["accuracy"] == pytest.approx(table.opening.mean())
    unstated = table[~table.states_both]
    assert rows["reasoning_referent_unstated"]["n"] == len(unstated)
    if len(unstated):
        assert rows["reasoning_referent_unstated"]["accuracy"] == pytest.approx(unstated.referent.mean())
