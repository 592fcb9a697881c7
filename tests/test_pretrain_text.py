"""Stage 0 (text pretraining): the scene in words names every object; a dialogue's text context takes the
image's place in the prompt; a batch mixing text and image dialogues gives each row the logits it has on
its own; the stage trains the language model and nothing else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from segcompass.backbones import build_tiny
from segcompass.pretrain import language
from segcompass.pretrain.dialogue import QUESTION_KINDS, Dialogue, Turn, qa_dialogue, scene_text
from segcompass.pretrain.evaluate import question_accuracy
from segcompass.pretrain.language import (
    FeatureCache,
    answer_loss,
    encode_dialogues,
    label_logits,
    lm_logits,
    next_token_loss,
    score_candidates,
)
from segcompass.pretrain.optim import Schedule
from segcompass.pretrain.pool import ProcessorGrid, build_pool
from segcompass.pretrain.text import (
    LOOKUP_KINDS,
    RecallPhase,
    describe_again,
    recall_dialogue,
    short_scene,
    text_dialogue,
    text_samples,
    train_text,
)
from segcompass.world import WorldConfig
from segcompass.world.generate import generate_sample


@pytest.fixture(scope="module")
def setup(toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    pool = build_pool(WorldConfig(), "val", 3, ProcessorGrid.of(backbone.processor.image_processor))
    return backbone, pool


def test_scene_text_names_every_object_in_reading_order():
    sample = generate_sample(WorldConfig(), "train", 0)
    objects = sample.scene.objects
    first = min(objects, key=lambda o: (int(3 * o.cy / sample.scene.height), o.cx))
    text = scene_text(sample)
    assert text.startswith(f"Objects: a {first.size_name} {first.colour} {first.shape} at the ")
    assert text.count(" at the ") == len(objects) and text.endswith(".")
    for o in objects:
        assert f"{o.size_name} {o.colour} {o.shape} at the" in text
    assert "background" not in text and "hidden" not in text  # the objects only


def test_scene_text_of_a_hand_built_two_object_scene():
    sample = generate_sample(WorldConfig(), "train", 0)
    w, h = sample.scene.width, sample.scene.height
    star, disc = (dataclasses.replace(sample.scene.objects[0], id=i) for i in range(2))
    star = dataclasses.replace(star, shape="star", colour="red", size_name="large", cx=0.1 * w, cy=0.1 * h)
    disc = dataclasses.replace(disc, shape="circle", colour="blue", size_name="small", cx=0.9 * w, cy=0.9 * h)
    scene = dataclasses.replace(sample.scene, objects=[disc, star])
    assert scene_text(dataclasses.replace(sample, scene=scene)) == (
        "Objects: a large red star at the top left and a small blue circle at the bottom right."
    )


def test_a_text_context_takes_the_images_place_and_labels_stay_on_the_answers(setup):
    backbone, pool = setup
    turns = (Turn("colour", "What colour is the star?", "red"), Turn("count", "How many circles?", "2"))
    batch = encode_dialogues(backbone, None, [Dialogue(0, turns, "Objects: a large red star.")])
    ids = batch.inputs["input_ids"][0]
    text = backbone.tokenizer.decode(ids)
    assert "<|image_pad|>" not in text and "<|vision_start|>" not in text
    assert "user\nObjects: a large red star.\nWhat colour is the star?<|im_end|>" in text
    assert backbone.tokenizer.decode(ids[batch.labels[0] != -100]) == "red<|im_end|>2<|im_end|>"
    assert "image_grid_thw" not in batch.inputs and batch.images == []
    assert int(batch.inputs["mm_token_type_ids"].sum()) == 0
    with pytest.raises(ValueError, match="no text context and no pool"):
        encode_dialogues(backbone, None, [Dialogue(0, turns)])
    with pytest.raises(ValueError, match="FeatureCache"):
        lm_logits(backbone, encode_dialogues(backbone, pool, [Dialogue(0, turns)]), None)


def test_a_mixed_batch_gives_each_row_its_own_logits(setup):
    """Rows with a text context and rows with an image in one batch: every row's logits equal that
    dialogue encoded alone (the image features and grids go to the image rows, in order)."""
    backbone, pool = setup
    rng = np.random.default_rng(0)
    dialogues = [
        qa_dialogue(2, pool[2].sample, rng, 2, 0.0, 2),
        text_dialogue(0, pool[0].sample, rng, 2, 0.0, 2),
        qa_dialogue(1, pool[1].sample, rng, 1, 0.0, 2),
    ]
    cache = FeatureCache(backbone, pool)
    batch = encode_dialogues(backbone, pool, dialogues)
    assert batch.images == [2, 1] and batch.inputs["image_grid_thw"].shape == (2, 3)
    with torch.no_grad():
        mixed = lm_logits(backbone, batch, cache)
        for row, d in enumerate(dialogues):
            alone = encode_dialogues(backbone, pool, [d])
            logits = lm_logits(backbone, alone, cache)[0]
            mask = batch.inputs["attention_mask"][row].bool()
            torch.testing.assert_close(mixed[row][mask], logits, atol=1e-4, rtol=1e-4)


def test_the_answer_loss_equals_the_loss_on_every_positions_logits_with_its_gradient(setup):
    """The head applied at the labelled positions only gives the full-logit loss and the same gradients
    (on a batch mixing image and text rows, with padding), and the candidates' scores are unchanged."""
    backbone, pool = setup
    rng = np.random.default_rng(3)
    dialogues = [
        qa_dialogue(2, pool[2].sample, rng, 3, 0.5, 2),
        text_dialogue(0, pool[0].sample, rng, 1, 0.0, 2),
        qa_dialogue(1, pool[1].sample, rng, 2, 1.0, 2),
    ]
    cache = FeatureCache(backbone, pool)
    batch = encode_dialogues(backbone, pool, dialogues)
    assert bool((batch.inputs["attention_mask"] == 0).any())  # rows of different lengths: padding
    params = [p for p in backbone.model.model.language_model.parameters()] + [backbone.model.lm_head.weight]

    def loss_and_grads(fn):
        backbone.model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    full, full_grads = loss_and_grads(
        lambda: next_token_loss(lm_logits(backbone, batch, cache), batch.labels)
    )
    ours, our_grads = loss_and_grads(lambda: answer_loss(backbone, batch, cache))
    backbone.model.zero_grad()
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(our_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    out = label_logits(backbone, batch, cache)
    assert len(out.logits) == int((batch.labels != -100).sum()) < batch.labels.numel() // 4
    assert out.rows.tolist() == sorted(out.rows.tolist()) and set(out.rows.tolist()) == {0, 1, 2}

    # score_candidates (now on label_logits) against the summed log-likelihood from the full logits.
    items = [(i, t) for i in range(3) for t in qa_dialogue(i, pool[i].sample, rng, 2, 0.0, 2).turns]
    picked = score_candidates(backbone, pool, cache, items)
    expected = []
    with torch.no_grad():
        for scene, t in items:
            scores = []
            for c in t.candidates:
                one = encode_dialogues(backbone, pool, [Dialogue(scene, (Turn(t.kind, t.question, c),))])
                logp = torch.log_softmax(lm_logits(backbone, one, cache)[0, :-1].float(), -1)
                target = one.labels[0, 1:]
                scores.append(float(logp[target != -100].gather(-1, target[target != -100, None]).sum()))
            expected.append(int(np.argmax(scores)))
    assert list(picked) == expected
    with pytest.raises(ValueError, match="no labelled position"):
        none = encode_dialogues(backbone, pool, dialogues[:1])
        answer_loss(backbone, dataclasses.replace(none, labels=torch.full_like(none.labels, -100)), cache)


def test_the_per_turn_loss_averages_each_turn_then_the_turns(setup):
    """`answer_loss(per="turn")` against the per-position cross-entropy of the full logits, grouped by hand
    into each sequence's assistant turns; turns of unequal length make it differ from the token mean."""
    backbone, pool = setup
    dialogues = [
        Dialogue(0, (Turn("colour", "What colour is it?", "red"), Turn("describe", "Describe.", "a " * 20))),
        Dialogue(1, (Turn("shape", "Which shape?", "star"),)),
    ]
    cache = FeatureCache(backbone, pool)
    batch = encode_dialogues(backbone, pool, dialogues)
    out = label_logits(backbone, batch, cache)
    assert out.turns.tolist() == sorted(out.turns.tolist()) and int(out.turns.max()) + 1 == 3
    assert out.rows[out.turns == 2].unique().tolist() == [1]  # the second sequence's one turn
    with torch.no_grad():
        logp = torch.log_softmax(lm_logits(backbone, batch, cache)[:, :-1].float(), -1)
        turn_means = []
        for row in range(2):
            target = batch.labels[row, 1:]
            positions = (target != -100).nonzero()[:, 0].tolist()
            runs: list[list[int]] = []
            for p in positions:
                if runs and p == runs[-1][-1] + 1:
                    runs[-1].append(p)
                else:
                    runs.append([p])
            for run in runs:
                turn_means.append(float(-logp[row, run].gather(-1, target[run, None]).mean()))
        per_turn = answer_loss(backbone, batch, cache, per="turn")
        per_token = answer_loss(backbone, batch, cache)
    assert len(turn_means) == 3
    assert float(per_turn) == pytest.approx(np.mean(turn_means), rel=1e-5)
    assert abs(float(per_turn) - float(per_token)) > 1e-3
    with pytest.raises(ValueError, match="per must be one of"):
        answer_loss(backbone, batch, cache, per="sequence")


def test_text_samples_keep_the_scene_and_drop_the_pixels():
    samples = text_samples(WorldConfig(), "train", 3)
    full = generate_sample(WorldConfig(), "train", 1)
    assert samples[1].image is None and samples[1].masks.size == 0
    assert samples[1].scene.objects == full.scene.objects
    assert (samples[1].instruction, samples[1].reasoning) == (full.instruction, full.reasoning)


def test_stage_0_trains_the_language_model_and_not_the_tower(toy_vlm_spec):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    samples = text_samples(WorldConfig(), "train", 4)
    record = train_text(backbone, samples, Schedule(steps=3, batch_size=2), 2, 0.5, 2, 0, progress=False)
    after = backbone.model.state_dict()
    tower = [k for k in after if ".visual." in k or k.startswith("visual.")]
    language = [k for k in after if "language_model.layers." in k]
    assert tower and language and len(record.losses) == 3
    assert all(torch.equal(before[k], after[k]) for k in tower)
    assert any(not torch.equal(before[k], after[k]) for k in language)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_text_question_accuracy_puts_each_scene_in_words_before_its_question(setup, monkeypatch):
    backbone, pool = setup
    seen: list[Dialogue] = []
    real = language.encode_dialogues

    def spy(backbone, pool, dialogues):
        seen.extend(dialogues)
        return real(backbone, pool, dialogues)

    monkeypatch.setattr(language, "encode_dialogues", spy)
    rows = question_accuracy(backbone, pool, "x", text=True)
    assert [r["measure"] for r in rows] == [f"text_{k}" for k in QUESTION_KINDS]
    assert seen and all(d.context == scene_text(pool[d.scene].sample) for d in seen)
    assert sum(r["n"] for r in rows) == len({(d.scene, d.turns[0].question) for d in seen})


def test_a_short_scene_keeps_n_of_the_objects_in_their_order():
    sample = generate_sample(WorldConfig(), "train", 0)
    objects = sample.scene.objects
    short = short_scene(sample, 2, np.random.default_rng(0))
    kept = short.scene.objects
    assert len(kept) == 2 and all(o in objects for o in kept)
    assert [objects.index(o) for o in kept] == sorted(objects.index(o) for o in kept)
    assert sample.scene.objects is objects and len(objects) > 2  # the sample itself is untouched
    assert short_scene(sample, 99, np.random.default_rng(0)).scene.objects == objects


def test_recall_dialogues_ask_about_the_short_scene_in_their_context():
    phase = RecallPhase(objects=(2, 3), questions=2)
    rng = np.random.default_rng(1)
    samples = text_samples(WorldConfig(), "train", 20)
    for i, sample in enumerate(samples):
        dialogue = recall_dialogue(i, sample, rng, phase)
        assert dialogue.scene == i and dialogue.context.startswith("Objects: ")
        named = dialogue.context.count(" at the ")
        assert 1 <= named <= 3 and 1 <= len(dialogue.turns) <= 2
        for turn in dialogue.turns:
            assert turn.kind in LOOKUP_KINDS or (turn.kind == "count" and len(dialogue.turns) == 1)
            if turn.kind == "colour":  # the answer is the colour of a listed object of the named shape
                shape = turn.question.removesuffix("?").split()[-1]
                assert f"{turn.answer} {shape} at the" in dialogue.context


def test_named_with_size_the_recall_questions_say_the_size_and_the_answer_follows_it():
    phase = RecallPhase(objects=(3, 3), questions=2, kinds=("colour", "shape"), name_with_size=True)
    rng = np.random.default_rng(2)
    asked = 0
    for i, sample in enumerate(text_samples(WorldConfig(), "train", 30)):
        dialogue = recall_dialogue(i, sample, rng, phase)
        context = dialogue.context.removeprefix("Objects: ").rstrip(".").replace(" and a", ", a")
        for turn in dialogue.turns:
            if turn.kind == "count":
                continue
            words = turn.question.removesuffix("?").removesuffix(" one").split()
            size, name = words[-2], words[-1]
            assert size in ("small", "medium", "large"), turn.question
            # The listed object of that size and name carries the answer, and it is the only such object.
            listed = [
                part
                for part in context.split(", ")
                if part.split()[1:3] == [size, name] or part.split()[1:4:2] == [size, name]
            ]
            assert len(listed) == 1 and turn.answer in listed[0].split(), (turn, dialogue.context)
            asked += 1
    assert asked >= 30


def test_describe_again_says_the_context_again():
    sample = short_scene(generate_sample(WorldConfig(), "train", 3), 3, np.random.default_rng(0))
    turn = describe_again(sample)
    context = scene_text(sample).removeprefix("Objects: ")
    assert turn.kind == "describe" and turn.answer == context[0].upper() + context[1:]


@pytest.mark.parametrize(
    "bad",
    [
        {"objects": (3, 2)},
        {"objects": (0, 2)},
        {"questions": 0},
        {"kinds": ("colour", "smell")},
        {"kinds": ()},
    ],
)
def test_a_bad_recall_phase_is_refused(bad):
    with pytest.raises(ValueError):
        RecallPhase(**bad)


def test_the_recall_phase_runs_first_and_with_its_own_batches(toy_vlm_spec, monkeypatch):
    from segcompass.pretrain import text

    seen: list[list[Dialogue]] = []
    real = text.encode_dialogues

    def spy(backbone, pool, dialogues):
        seen.append(list(dialogues))
        return real(backbone, pool, dialogues)

    monkeypatch.setattr(text, "encode_dialogues", spy)
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    samples = text_samples(WorldConfig(), "train", 4)
    phase = RecallPhase(Schedule(steps=2, batch_size=3), objects=(2, 2), questions=1)
    record = train_text(backbone, samples, Schedule(steps=1, batch_size=2), 2, 0.0, 2, 0, False, phase)
    assert len(record.losses) == 3 and [len(b) for b in seen] == [3, 3, 2]
    assert all(d.context.count(" at the ") <= 2 and len(d.turns) == 1 for b in seen[:2] for d in b)
    assert all(d.context == scene_text(samples[d.scene]) for d in seen[2])
