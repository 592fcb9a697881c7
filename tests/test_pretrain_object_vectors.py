"""Scenes as one vector per object: each vector is the sum of its words' embeddings, object j lands on image
token j of its row in a batch (and nowhere else), and the grounding target of a question is its object's
token; on an image grid each token is the vector of the object covering it (the oracle tokens)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from segcompass.backbones import build_tiny
from segcompass.pretrain.dialogue import Dialogue, question_turn
from segcompass.pretrain.evaluate import tokens_in_place_of_the_tower
from segcompass.pretrain.grounding import grounding_targets
from segcompass.pretrain.language import encode_dialogues, lm_logits, model_inputs
from segcompass.pretrain.object_vectors import ObjectScene, ObjectVectorCache, object_words
from segcompass.pretrain.pool import ProcessorGrid, build_pool
from segcompass.pretrain.text import short_scene, text_samples
from segcompass.world import WorldConfig


@pytest.fixture(scope="module")
def backbone(toy_vlm_spec):
    return build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)


@pytest.fixture(scope="module")
def samples():
    return text_samples(WorldConfig(), "train", 6)


def test_an_objects_vector_is_the_sum_of_its_words_embeddings(backbone, samples):
    sample = samples[0]
    scene = sample.scene
    obj = scene.objects[1]
    words = object_words(obj, scene.width, scene.height)
    assert words[:3] == [obj.colour, obj.shape, obj.size_name] and len(words) in (
        4,
        5,
    )  # "centre" / "top left"
    table = backbone.model.get_input_embeddings().weight
    expected = torch.zeros(table.shape[1])
    for word in words:
        ids = backbone.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        expected += table[ids].mean(0)
    cache = ObjectVectorCache(backbone, [ObjectScene.of(sample)], scale=2.0)
    vectors = cache.get([0])[0]
    assert vectors.shape == (len(scene.objects), table.shape[1]) and not vectors.requires_grad
    torch.testing.assert_close(vectors[1], 2.0 * expected)
    # Two objects that differ only in colour differ by the difference of the colours' embeddings.
    other = "red" if obj.colour != "red" else "blue"
    recoloured = dataclasses.replace(scene, objects=[dataclasses.replace(obj, colour=other)])
    moved = cache.vectors(dataclasses.replace(sample, scene=recoloured))[0]
    colour = lambda w: table[backbone.tokenizer(" " + w, add_special_tokens=False)["input_ids"]].mean(0)  # noqa: E731
    torch.testing.assert_close((moved - vectors[1]) / 2.0, colour(other) - colour(obj.colour))


def test_object_j_is_image_token_j_of_its_row(backbone, samples):
    rng = np.random.default_rng(0)
    pool = [ObjectScene.of(short_scene(s, n, rng)) for s, n in zip(samples[:3], (2, 5, 3), strict=True)]
    dialogues = [Dialogue(i, (question_turn(p.sample, "count", rng),)) for i, p in enumerate(pool)]
    batch = encode_dialogues(backbone, pool, dialogues)
    cache = ObjectVectorCache(backbone, pool)
    seen = {}

    def keep_embeds(module, args, kwargs) -> None:
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    language = backbone.model.model.language_model
    hook = language.register_forward_pre_hook(keep_embeds, with_kwargs=True)
    try:
        with torch.no_grad():
            lm_logits(backbone, batch, cache)
    finally:
        hook.remove()
    ids = batch.inputs["input_ids"]
    for row, entry in enumerate(pool):
        positions = torch.nonzero(ids[row] == backbone.image_token_id).squeeze(-1)
        assert len(positions) == len(entry.sample.scene.objects)  # one token per object
        torch.testing.assert_close(seen["embeds"][row, positions], cache.vectors(entry.sample))


def test_the_grounding_target_is_the_named_objects_token(backbone, samples):
    rng = np.random.default_rng(3)
    pool, dialogues = [], []
    for sample in samples:
        short = short_scene(sample, 4, rng)
        turn = question_turn(short, "colour", rng)
        if turn is None:
            continue
        dialogues.append(Dialogue(len(pool), (turn,)))
        pool.append(ObjectScene.of(short))
    assert len(dialogues) >= 3
    batch = encode_dialogues(backbone, pool, dialogues)
    targets = grounding_targets(backbone, pool, dialogues, batch.inputs["input_ids"], batch.labels)
    assert targets.rows.tolist() == list(range(len(dialogues)))
    for row, dialogue in enumerate(dialogues):
        marked = torch.nonzero(targets.token_mask[row]).squeeze(-1)
        positions = torch.nonzero(batch.inputs["input_ids"][row] == backbone.image_token_id).squeeze(-1)
        assert marked.tolist() == [int(positions[dialogue.turns[0].target])]
        obj = pool[dialogue.scene].sample.scene.objects[dialogue.turns[0].target]
        assert obj.colour == dialogue.turns[0].answer


def test_a_scene_without_objects_is_refused(samples):
    empty = dataclasses.replace(samples[0], scene=dataclasses.replace(samples[0].scene, objects=[]))
    with pytest.raises(ValueError, match="at least one object"):
        ObjectScene.of(empty)


def test_oracle_tokens_on_an_image_grid_carry_the_covering_objects_vector(backbone):
    pool = build_pool(WorldConfig(), "train", 3, ProcessorGrid.of(backbone.processor.image_processor))
    cache = ObjectVectorCache(backbone, pool)
    rng = np.random.default_rng(5)
    dialogues = [Dialogue(i, (question_turn(s.sample, "count", rng),)) for i, s in enumerate(pool.scenes)]
    batch = encode_dialogues(backbone, pool, dialogues)
    seen = {}

    def keep_embeds(module, args, kwargs) -> None:
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    hook = backbone.model.model.language_model.register_forward_pre_hook(keep_embeds, with_kwargs=True)
    try:
        with torch.no_grad():
            lm_logits(backbone, batch, cache)
    finally:
        hook.remove()
    for row, scene in enumerate(pool.scenes):
        vectors = cache.vectors(scene.sample)
        rows, cols = scene.grid
        cells = scene.coverage.reshape(len(vectors), rows * cols)  # [n_obj, cells]
        positions = torch.nonzero(batch.inputs["input_ids"][row] == backbone.image_token_id).squeeze(-1)
        embeds = seen["embeds"][row, positions]  # [cells, D], raster order
        assert len(embeds) == rows * cols
        owned = background = 0
        for cell in range(rows * cols):
            best = int(cells[:, cell].argmax())
            if cells[best, cell] >= 0.5:  # an object covers at least half of the cell: its vector
                torch.testing.assert_close(embeds[cell], vectors[best])
                owned += 1
            else:  # background or a mixed cell: nothing
                assert not embeds[cell].any()
                background += 1
        assert owned > 0 and background > 0


def test_oracle_tokens_replace_the_towers_for_generation_exactly_as_in_training(backbone):
    """`evaluate.tokens_in_place_of_the_tower` (the greedy reasoning read off oracle tokens) gives the same
    logits as the training path that feeds the tokens in the merger's place, and not the tower's."""
    pool = build_pool(WorldConfig(), "val", 2, ProcessorGrid.of(backbone.processor.image_processor))
    cache = ObjectVectorCache(backbone, pool)
    prepared = backbone.prepare(
        [s.sample.image for s in pool.scenes], [s.sample.instruction for s in pool.scenes]
    )
    backbone.model.eval()
    with torch.no_grad():
        with tokens_in_place_of_the_tower(backbone, cache, [0, 1]):
            swapped = backbone.model(**prepared.inputs).logits
        fed = backbone.model(**model_inputs(prepared.inputs, cache.get([0, 1]))).logits
        tower = backbone.model(**prepared.inputs).logits  # the hook is gone again
    torch.testing.assert_close(swapped, fed)
    assert not torch.allclose(swapped, tower, atol=1e-4)
    one_scene = tokens_in_place_of_the_tower(backbone, cache, [0])  # two images' tokens, one scene's given
    with pytest.raises(ValueError, match="processor's pixels must match the pool's grid"), one_scene:
        backbone.model(**prepared.inputs)
