"""Attention grounding: targets point at the named object's image tokens from the position that predicts
the answer; the recomputed attention equals the model's eager attention weights; the loss trains the layers
at and below the chosen ones and nothing above. And the measure of whether answers follow the named object."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from segcompass.backbones import build_tiny
from segcompass.backbones.family import TinySpec
from segcompass.pretrain import evaluate
from segcompass.pretrain.dialogue import (
    Dialogue,
    Turn,
    format_turn,
    grounded_format_turn,
    qa_dialogue,
    reasoning_mentions,
    slot_grounded_format_turn,
)
from segcompass.pretrain.evaluate import named_object_sensitivity, swap_pairs
from segcompass.pretrain.grounding import (
    Grounding,
    answer_attention,
    capture_attention_inputs,
    grounding_loss,
    grounding_targets,
)
from segcompass.pretrain.labels import covering_object
from segcompass.pretrain.language import FeatureCache, encode_dialogues, model_inputs, train_dialogues
from segcompass.pretrain.optim import Schedule
from segcompass.pretrain.pool import build_pool
from segcompass.pretrain.stack import ProcessorGrid
from segcompass.world import WorldConfig
from segcompass.world.language import object_phrase

SPEC = TinySpec(
    hidden_size=64,
    num_layers=3,
    intermediate_size=128,
    vision_hidden_size=32,
    vision_layers=1,
    image_size=112,
    min_pixels=112 * 112,
    hook_layer=1,
    extra={"vision_config": {"fullatt_block_indexes": [0]}},
)


@pytest.fixture(scope="module")
def setup():
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=SPEC)
    pool = build_pool(WorldConfig(), "train", 4, ProcessorGrid.of(backbone.processor.image_processor))
    dialogues = [qa_dialogue(i, pool[i].sample, np.random.default_rng(i), 4, 0.5, 2) for i in range(4)]
    batch = encode_dialogues(backbone, pool, dialogues)
    return backbone, pool, dialogues, batch


def test_questions_name_the_object_they_ask_about(setup):
    _, pool, dialogues, _ = setup
    named = [(d, t) for d in dialogues for t in d.turns if t.target is not None]
    assert named
    for d, t in named:
        obj = pool[d.scene].sample.scene.objects[t.target]
        if t.kind == "colour":
            assert t.answer == obj.colour and obj.shape in t.question
        elif t.kind == "shape":
            assert t.answer == obj.shape and obj.colour in t.question
        elif t.kind == "size":
            assert t.answer == obj.size_name and f"{obj.colour} {obj.shape}" in t.question
        else:
            assert t.kind == "position" and f"{obj.colour} {obj.shape}" in t.question
    assert all(t.target is None for d in dialogues for t in d.turns if t.kind in ("count", "format"))


def test_targets_sit_before_each_answer_and_cover_the_objects_cells(setup):
    backbone, pool, dialogues, batch = setup
    ids, labels = batch.inputs["input_ids"], batch.labels
    targets = grounding_targets(backbone, pool, dialogues, ids, labels)
    expected = [
        (b, t.target)
        for b, d in enumerate(dialogues)
        for t in d.turns
        if t.target is not None and (covering_object(pool[d.scene].coverage) == t.target).any()
    ]
    assert [(int(r), None) for r in targets.rows] == [(b, None) for b, _ in expected]
    for n, (b, obj) in enumerate(expected):
        pos = int(targets.positions[n])
        assert labels[b, pos] == -100 and labels[b, pos + 1] != -100  # predicts the answer's first token
        cells = covering_object(pool[dialogues[b].scene].coverage) == obj
        image_positions = torch.nonzero(ids[b] == backbone.image_token_id).squeeze(-1)
        assert torch.equal(
            targets.token_mask[n].nonzero().squeeze(-1), image_positions[torch.from_numpy(cells)]
        )


def test_recomputed_attention_equals_the_eager_weights(setup):
    backbone, pool, dialogues, batch = setup
    targets = grounding_targets(backbone, pool, dialogues, batch.inputs["input_ids"], batch.labels)
    model = backbone.model
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad(), capture_attention_inputs(backbone, (1, 2)) as captured:
            out = model(
                **model_inputs(batch.inputs, FeatureCache(backbone, pool).get(batch.scenes)),
                output_attentions=True,
            )
            layers = model.model.language_model.layers
            for layer in (1, 2):
                hidden, rotary = captured[layer]
                ours = answer_attention(
                    layers[layer].self_attn, hidden, rotary, batch.inputs["attention_mask"], targets
                )
                eager = out.attentions[layer][targets.rows, :, targets.positions]  # [N, H, T]
                torch.testing.assert_close(ours, eager, atol=1e-5, rtol=1e-4)
    finally:
        model.set_attn_implementation("sdpa")


def test_loss_is_minus_log_of_the_best_heads_mass_and_trains_only_layers_up_to_the_chosen(setup):
    backbone, pool, dialogues, batch = setup
    targets = grounding_targets(backbone, pool, dialogues, batch.inputs["input_ids"], batch.labels)
    model = backbone.model
    model.zero_grad()
    with capture_attention_inputs(backbone, (1,)) as captured:
        model(**model_inputs(batch.inputs, FeatureCache(backbone, pool).get(batch.scenes)))
        loss = grounding_loss(backbone, captured, batch.inputs["attention_mask"], targets)
        hidden, rotary = captured[1]
        weights = answer_attention(
            model.model.language_model.layers[1].self_attn,
            hidden,
            rotary,
            batch.inputs["attention_mask"],
            targets,
        )
    per_head = (weights * targets.token_mask[:, None]).sum(-1)  # [N, H]
    torch.testing.assert_close(loss, -torch.log(per_head.max(-1).values).mean())
    every = grounding_loss(backbone, captured, batch.inputs["attention_mask"], targets, heads="all")
    torch.testing.assert_close(every, -torch.log(per_head).mean())
    assert every > loss  # every head's mass is at most the best head's
    loss.backward()
    layers = model.model.language_model.layers
    assert layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert layers[1].self_attn.k_proj.weight.grad.abs().sum() > 0
    assert layers[0].mlp.down_proj.weight.grad.abs().sum() > 0  # the layer below shapes the keys
    assert (
        layers[1].self_attn.v_proj.weight.grad is None
        or layers[1].self_attn.v_proj.weight.grad.abs().sum() == 0
    )
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in layers[2].parameters())
    model.zero_grad()


def test_targets_reject_a_batch_whose_turns_do_not_match_its_labels(setup):
    backbone, pool, dialogues, batch = setup
    extra = Dialogue(dialogues[0].scene, (*dialogues[0].turns, Turn("count", "How many?", "1")))
    with pytest.raises(ValueError, match="labelled spans"):
        grounding_targets(backbone, pool, [extra, *dialogues[1:]], batch.inputs["input_ids"], batch.labels)


def test_swap_pairs_change_only_the_named_object(setup):
    _, pool, _, _ = setup
    for kind, by in (("colour", "shape"), ("shape", "colour")):
        for scene, a, b in swap_pairs(pool, kind):
            objects = pool[scene].sample.scene.objects
            assert a.answer != b.answer and a.target != b.target
            for t in (a, b):
                obj = objects[t.target]
                assert t.answer == getattr(obj, kind) and getattr(obj, by) in t.question
                assert (
                    sum(getattr(o, by) == getattr(obj, by) for o in objects) == 1
                )  # the phrase names one object
            assert a.question.replace(getattr(objects[a.target], by), "X") == b.question.replace(
                getattr(objects[b.target], by), "X"
            )


def test_sensitivity_is_zero_for_a_model_that_ignores_the_question_and_one_for_one_that_reads_it(
    setup, monkeypatch
):
    backbone, pool, _, _ = setup
    pairs = swap_pairs(pool, "colour") + swap_pairs(pool, "shape")
    assert pairs

    def ignores(backbone, pool, cache, items, text=False):  # the same pick for every question of a scene
        return np.zeros(len(items), dtype=int)

    def reads(backbone, pool, cache, items, text=False):
        return np.asarray([t.candidates.index(t.answer) for _, t in items])

    for scorer, expected in ((ignores, 0.0), (reads, 1.0)):
        monkeypatch.setattr(evaluate, "score_candidates", scorer)
        rows = {r["measure"]: r for r in named_object_sensitivity(backbone, pool, "m")}
        for kind in ("colour", "shape"):
            row = rows[f"{kind}_answer_follows_object"]
            if row["n"]:
                assert row["accuracy"] == expected
        if expected:
            assert all(
                rows[f"{k}_swap_pair_accuracy"]["accuracy"] == 1.0
                for k in ("colour", "shape")
                if rows[f"{k}_swap_pair_accuracy"]["n"]
            )


def test_training_with_grounding_raises_the_attention_on_the_named_object():
    backbone = build_tiny("qwen2_5_vl", seed=1, spec=SPEC)
    pool = build_pool(WorldConfig(), "train", 6, ProcessorGrid.of(backbone.processor.image_processor))
    record = train_dialogues(
        backbone,
        pool,
        FeatureCache(backbone, pool),
        Schedule(steps=40, batch_size=4, lr=1e-2, warmup_fraction=0.0),
        lambda scene, rng: qa_dialogue(scene, pool[scene].sample, rng, 4, 0.0, 2),
        seed=0,
        desc="test",
        progress=False,
        grounding=Grounding(weight=1.0, layers=(1,)),
    )
    grounding = [p["grounding"] for p in record.parts]
    assert np.mean(grounding[-5:]) < 0.7 * np.mean(grounding[:5])
    assert all(np.isfinite(p["lm"]) for p in record.parts)


def test_a_reasonings_object_phrases_are_grounded_token_by_token_on_their_objects(setup):
    backbone, pool, _, _ = setup
    scene = next(
        i for i, s in enumerate(pool.scenes) if len(reasoning_mentions(s.sample.reasoning, s.sample))
    )
    sample = pool[scene].sample
    turn = grounded_format_turn(sample, 2)
    assert turn.answer == format_turn(sample, 2).answer and turn.target is None
    objects, (width, height) = sample.scene.objects, (sample.scene.width, sample.scene.height)
    for first, end, index in turn.mentions:  # each span is the named object's own phrase, minus "the "
        assert "the " + turn.answer[first:end] == object_phrase(objects[index], width, height)
    dialogue = Dialogue(scene, (Turn("count", "How many?", "2", ("1", "2")), turn))
    batch = encode_dialogues(backbone, pool, [dialogue])
    targets = grounding_targets(backbone, pool, [dialogue], batch.inputs["input_ids"], batch.labels)
    owner = covering_object(pool[scene].coverage)
    image_positions = torch.nonzero(batch.inputs["input_ids"][0] == backbone.image_token_id).squeeze(-1)
    ids = batch.inputs["input_ids"][0]
    predicted = "".join(backbone.tokenizer.decode([int(ids[p + 1])]) for p in targets.positions)
    cells = [i for _, _, i in turn.mentions if (owner == i).any()]
    # The positions predict exactly the tokens of the mentions whose objects own a cell, in order …
    expected = "".join(" " + turn.answer[a:e] for a, e, i in turn.mentions if (owner == i).any())
    assert predicted.replace(" ", "") == expected.replace(" ", "") and cells
    # … and each attends to its object's cells.
    by_token = [
        i for a, e, i in turn.mentions if (owner == i).any() for _ in range(_tokens(backbone, a, e, turn))
    ]
    for mask, index in zip(targets.token_mask, by_token, strict=True):
        assert torch.equal(torch.nonzero(mask).squeeze(-1), image_positions[torch.from_numpy(owner == index)])


def _tokens(backbone, first: int, end: int, turn: Turn) -> int:
    offsets = backbone.tokenizer(turn.answer, add_special_tokens=False, return_offsets_mapping=True)
    return sum(a < end and b > first for a, b in offsets["offset_mapping"])


def test_a_phrase_that_names_two_objects_is_not_a_mention(setup):
    _, pool, _, _ = setup
    sample = next(s.sample for s in pool.scenes if reasoning_mentions(s.sample.reasoning, s.sample))
    *_, index = reasoning_mentions(sample.reasoning, sample)[0]
    twin = dataclasses.replace(sample.scene, objects=[*sample.scene.objects, sample.scene.objects[index]])
    doubled = dataclasses.replace(sample, scene=twin)
    assert all(i != index for _, _, i in reasoning_mentions(sample.reasoning, doubled))


def test_slot_reads_cover_each_ref_pos_and_cycle_through_the_targets(setup):
    _, pool, _, _ = setup
    samples = [s.sample for s in pool.scenes]
    for sample in samples:
        turn = slot_grounded_format_turn(sample, 3)
        assert turn.answer == format_turn(sample, 3).answer and not turn.mentions
        targets = sorted(sample.target_ids)
        if not targets:
            assert turn.slot_reads == ()
            continue
        assert [turn.answer[a:e] for a, e, _ in turn.slot_reads] == ["<REF_POS>"] * 3
        assert [i for _, _, i in turn.slot_reads] == [targets[k % len(targets)] for k in range(3)]
        assert turn.slot_reads[-1][1] == len(turn.answer)  # the last <REF_POS> ends the answer
    no_target = dataclasses.replace(samples[0], target_ids=[])
    assert slot_grounded_format_turn(no_target, 2).slot_reads == ()


def test_slot_grounding_keeps_the_dialogues_draws(setup):
    _, pool, _, _ = setup
    for i in range(4):
        plain = qa_dialogue(i, pool[i].sample, np.random.default_rng(i), 4, 1.0, 2, 0.5)
        grounded = qa_dialogue(i, pool[i].sample, np.random.default_rng(i), 4, 1.0, 2, 0.5, ground_slots=True)
        assert [(t.kind, t.question, t.answer) for t in plain.turns] == [
            (t.kind, t.question, t.answer) for t in grounded.turns
        ]
        fmt = next(t for t in grounded.turns if t.kind == "format")
        assert fmt.slot_reads == slot_grounded_format_turn(pool[i].sample, 2).slot_reads


def test_slot_reads_ground_the_states_at_the_ref_pos_tokens_on_their_targets(setup):
    backbone, pool, _, _ = setup
    owner_of = {i: covering_object(pool[i].coverage) for i in range(len(pool.scenes))}
    scene = next(
        i
        for i, s in enumerate(pool.scenes)
        if s.sample.target_ids and all((owner_of[i] == t).any() for t in s.sample.target_ids)
    )
    sample = pool[scene].sample
    turn = slot_grounded_format_turn(sample, 2)
    dialogue = Dialogue(scene, (turn, Turn("count", "How many?", "2", ("1", "2"))))
    batch = encode_dialogues(backbone, pool, [dialogue])
    ids = batch.inputs["input_ids"][0]
    targets = grounding_targets(backbone, pool, [dialogue], batch.inputs["input_ids"], batch.labels)
    ref_pos = backbone.tokenizer.convert_tokens_to_ids("<REF_POS>")
    # The grounded positions are the two <REF_POS> tokens themselves (the states the head reads as e_k) …
    assert targets.positions.tolist() == torch.nonzero(ids == ref_pos).squeeze(-1).tolist()
    assert targets.rows.tolist() == [0, 0]
    # … each reading its target's cells.
    image_positions = torch.nonzero(ids == backbone.image_token_id).squeeze(-1)
    owner = owner_of[scene]
    for mask, (_, _, index) in zip(targets.token_mask, turn.slot_reads, strict=True):
        assert torch.equal(torch.nonzero(mask).squeeze(-1), image_positions[torch.from_numpy(owner == index)])
