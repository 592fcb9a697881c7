"""Counting by listing (`dialogue.listed_count_turn`, `StackConfig.count_listing`) and the greedy count measure
(`evaluate_count`): the answer lists exactly the objects counted, in reading order, each grounded on its object,
and ends with the count the plain question has; the dialogues' draws do not change; the measure reads the
last number of canned answers and splits off three objects or more."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from segcompass.pretrain.config import StackConfig
from segcompass.pretrain.dialogue import listed_count_turn, qa_dialogue, question_turn
from segcompass.pretrain.evaluate import question_items
from segcompass.pretrain.evaluate_count import answered_count, greedy_count_accuracy
from segcompass.pretrain.pool import ScenePool
from segcompass.world import WorldConfig
from segcompass.world.generate import generate_split
from segcompass.world.language import location_words

SAMPLES = list(generate_split(WorldConfig(), "train", 40))


def _counted(sample, question: str) -> list[int]:
    """Indices of the objects a count question counts, read from its words by hand."""
    noun = question.removeprefix("How many ").removesuffix(" are there?")
    objects = sample.scene.objects
    if noun.endswith(" shapes"):
        return [i for i, o in enumerate(objects) if o.colour == noun.split()[0]]
    return [i for i, o in enumerate(objects) if noun.startswith(o.shape)]


def test_the_listed_count_names_each_counted_object_in_reading_order_and_ends_with_the_count():
    several = grounded = listed = 0
    for k, sample in enumerate(SAMPLES):
        plain_rng, rng = np.random.default_rng(k), np.random.default_rng(k)
        plain = question_turn(sample, "count", plain_rng)
        turn = listed_count_turn(sample, rng)
        assert rng.random() == plain_rng.random()  # the same draws as the plain question
        assert (turn.kind, turn.question) == ("count", plain.question)
        assert turn.answer.endswith(f". So {plain.answer}.")
        counted = _counted(sample, turn.question)
        assert len(counted) == int(plain.answer)
        scene = sample.scene
        if not counted:
            assert turn.answer.split(": ")[1] == "none. So 0." and turn.mentions == ()
            continue
        order = sorted(
            counted, key=lambda i: (int(3 * scene.objects[i].cy / scene.height), scene.objects[i].cx)
        )
        phrases = [
            f"the {scene.objects[i].size_name} {scene.objects[i].colour} {scene.objects[i].shape} at the "
            f"{location_words(scene.objects[i], scene.width, scene.height)}"
            for i in order
        ]
        listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        head = turn.question.removeprefix("How many ").removesuffix(" are there?")
        assert turn.answer == f"{head[0].upper()}{head[1:]}: {listing}. So {len(order)}."
        # each phrase naming one object is grounded on that object, from its size word to its end
        for start, end, index in turn.mentions:
            assert index in counted and turn.answer[start:end] == phrases[order.index(index)][4:]
        several += len(order) >= 2
        grounded += len(turn.mentions)
        listed += len(order)
    assert several >= 3  # the joined listings were checked too
    assert grounded >= 0.9 * listed  # phrases that name one object are grounded (all but duplicates)


def test_listing_the_counts_keeps_the_dialogues_draws_and_changes_only_the_count_answers():
    for k, sample in enumerate(SAMPLES[:20]):
        plain = qa_dialogue(k, sample, np.random.default_rng(k), 6, 0.6, 4, 0.5)
        listed = qa_dialogue(k, sample, np.random.default_rng(k), 6, 0.6, 4, 0.5, list_counts=True)
        assert [t.question for t in plain.turns] == [t.question for t in listed.turns]
        for a, b in zip(plain.turns, listed.turns, strict=True):
            if a.kind == "count":
                assert b.answer.endswith(f"So {a.answer}.") and b.answer != a.answer
            else:
                assert a == b


def test_count_listing_is_keyed_only_when_on_and_survives_a_round_trip():
    default = StackConfig()
    listed = StackConfig(count_listing=True)
    assert "count_listing" not in default.instruct_stage()  # off: the committed stage 3 keeps its key
    assert (
        listed.instruct_stage() != default.instruct_stage() and listed.align_stage() == default.align_stage()
    )
    assert StackConfig.from_stage(listed.instruct_stage()).count_listing
    assert not StackConfig.from_stage(default.instruct_stage()).count_listing


def test_the_answered_count_is_the_last_number():
    assert (
        answered_count(
            "Circles: the small red circle at the top left and the large blue circle at the centre. So 2."
        )
        == "2"
    )
    assert answered_count("3") == "3" and answered_count("Stars: none. So 0.") == "0"
    assert answered_count("Circles: none.") is None


def test_the_greedy_count_scores_canned_answers_by_hand(monkeypatch):
    from segcompass.pretrain import evaluate_count

    pool = ScenePool("val", [SimpleNamespace(sample=s) for s in SAMPLES[:30]])  # only the samples are read
    items = [(i, t) for i, t in question_items(pool) if t.kind == "count"]
    truth = [t.answer for _, t in items]
    many = [j for j, a in enumerate(truth) if int(a) >= 3]
    assert many and len(many) < len(items)
    # right on every other question, and the first question with three or more right as a listing
    canned = [a if j % 2 == 0 else str(int(a) + 1) for j, a in enumerate(truth)]
    canned[many[0]] = f"Circles: the a, the b and the c. So {truth[many[0]]}."
    asked = []

    def generate(backbone, examples, max_new_tokens, batch_size):
        asked.extend(e.prompt for e in examples)
        return canned

    monkeypatch.setattr(evaluate_count, "generate_responses", generate)
    rows = {r["measure"]: r for r in greedy_count_accuracy(None, pool, "m")}
    assert asked == [t.question for _, t in items]
    hits = [c == a or c.endswith(f"So {a}.") for c, a in zip(canned, truth, strict=True)]
    assert rows["count_greedy"]["n"] == len(items)
    assert rows["count_greedy"]["accuracy"] == pytest.approx(np.mean(hits))
    assert rows["count_greedy_3_or_more"]["n"] == len(many)
    assert rows["count_greedy_3_or_more"]["accuracy"] == pytest.approx(np.mean([hits[j] for j in many]))


def test_the_evaluation_table_carries_the_greedy_count(toy_vlm_spec):
    from segcompass.backbones import build_tiny
    from segcompass.pretrain.evaluation_table import evaluate_stack
    from segcompass.pretrain.pool import build_pool
    from segcompass.pretrain.stack import ProcessorGrid

    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    pool = build_pool(WorldConfig(), "val", 4, ProcessorGrid.of(backbone.processor.image_processor))
    table = evaluate_stack(backbone, pool, pool, "m", num_slots=2)
    rows = table.set_index("measure")
    counts = sum(t.kind == "count" for _, t in question_items(pool))
    assert rows.loc["count_greedy", "n"] == rows.loc["count", "n"] == counts
    assert 0 <= rows.loc["count_greedy", "accuracy"] <= 1
    assert rows.loc["count_greedy_3_or_more", "n"] <= counts
