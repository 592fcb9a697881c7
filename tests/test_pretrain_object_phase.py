"""Stage 0's object-vector phases: the "objects" layout asks about short scenes with one token per object,
the "image" layout about whole scenes on their image's grid (oracle tokens); both train the language model
alone, and their grounding objective moves the answers' attention onto the named object. The phases enter
stage 0's key only when they have steps."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from segcompass.backbones import build_tiny
from segcompass.pretrain import language
from segcompass.pretrain.config import StackConfig
from segcompass.pretrain.grounding import Grounding
from segcompass.pretrain.object_phase import ObjectPhase, short_scene_pool, train_object_phase
from segcompass.pretrain.optim import Schedule
from segcompass.pretrain.pool import ProcessorGrid, build_pool
from segcompass.pretrain.stack import TEXT
from segcompass.pretrain.text import RecallPhase, text_samples
from segcompass.world import WorldConfig

LAST_LAYER = Grounding(weight=1.0, layers=(1,), heads="all")  # the toy language model has 2 layers


@pytest.fixture
def spy(monkeypatch):
    """Every batch the phase encodes: (pool, dialogues, input_ids)."""
    seen = []
    real = language.encode_dialogues

    def encode(backbone, pool, dialogues):
        batch = real(backbone, pool, dialogues)
        seen.append((pool, list(dialogues), batch.inputs["input_ids"]))
        return batch

    monkeypatch.setattr(language, "encode_dialogues", encode)
    return seen


@pytest.mark.parametrize(
    "bad",
    [
        {"layout": "grid"},
        {"short_scenes": 0},
        {"grounding": {"weight": -1.0}},
        {"objects": (0, 3)},
        {"loss_per": "sequence"},
        {"words": 1.5},
        {"words": 0.5, "layout": "objects"},
    ],
)
def test_a_bad_object_phase_is_refused(bad):
    with pytest.raises(ValueError):
        ObjectPhase(**bad)


def test_each_stack_phase_keeps_its_layout():
    with pytest.raises(ValueError, match="object_image must have layout 'image'"):
        StackConfig(object_image=ObjectPhase(layout="objects"))


def test_the_phases_enter_stage_0s_key_only_with_steps_and_survive_a_round_trip():
    default = StackConfig()
    assert "object_recall" in default.text_stage() and "object_image" in default.text_stage()
    off = Schedule(steps=0, batch_size=8)
    base = replace(
        default,
        object_recall=replace(default.object_recall, schedule=off),
        object_image=replace(default.object_image, schedule=off),
    )
    assert "object_recall" not in base.text_stage() and "object_image" not in base.text_stage()
    on = replace(
        base,
        object_recall=replace(base.object_recall, schedule=Schedule(steps=5, batch_size=8)),
        object_image=replace(base.object_image, schedule=Schedule(steps=3, batch_size=4)),
    )
    assert TEXT.key(on.text_stage()) != TEXT.key(base.text_stage())
    # The image layout reads the train scenes: their number is in stage 0's key then, and only then.
    assert TEXT.key(replace(on, train_scenes=7).text_stage()) != TEXT.key(on.text_stage())
    assert TEXT.key(replace(base, train_scenes=7).text_stage()) == TEXT.key(base.text_stage())
    back = StackConfig.from_stage(json.loads(json.dumps(on.instruct_stage())))
    assert (back.object_recall, back.object_image) == (on.object_recall, on.object_image)
    assert back.object_image.grounding == Grounding(1.0, (2, 3), "all")
    assert "count" in back.object_image.kinds and back.object_recall.objects == (2, 7)


def test_the_per_turn_loss_and_words_enter_stage_0s_key_only_when_asked_and_survive_a_round_trip():
    default = StackConfig()
    assert {"loss_per", "words"}.isdisjoint(default.text_stage()["object_image"])  # the committed key
    per_turn = replace(default, object_image=replace(default.object_image, loss_per="turn"))
    assert per_turn.text_stage()["object_image"]["loss_per"] == "turn"
    assert TEXT.key(per_turn.text_stage()) != TEXT.key(default.text_stage())
    back = StackConfig.from_stage(json.loads(json.dumps(per_turn.text_stage())))
    assert back.object_image.loss_per == "turn" and back.object_recall.loss_per == "token"
    worded = replace(default, object_image=replace(default.object_image, words=0.25))
    assert TEXT.key(worded.text_stage()) not in (
        TEXT.key(default.text_stage()),
        TEXT.key(per_turn.text_stage()),
    )
    assert StackConfig.from_stage(json.loads(json.dumps(worded.text_stage()))).object_image.words == 0.25


def test_short_scenes_keep_a_drawn_number_of_a_scenes_objects():
    samples = text_samples(WorldConfig(), "train", 5)
    phase = ObjectPhase(objects=(2, 3), short_scenes=40)
    pool = short_scene_pool(samples, phase, seed=0)
    again = short_scene_pool(samples, phase, seed=0)
    assert len(pool) == 40 and [e.sample for e in pool] == [e.sample for e in again]
    for entry in pool:
        n = len(entry.sample.scene.objects)
        assert entry.grid == (1, n) and 1 <= n <= 3
        assert any(all(o in s.scene.objects for o in entry.sample.scene.objects) for s in samples), (
            "a short scene's objects come from one scene"
        )
    with pytest.raises(ValueError, match="at least one text scene"):
        short_scene_pool([], phase, seed=0)


def test_the_objects_layout_trains_the_language_model_on_one_token_per_object(toy_vlm_spec, spy):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    samples = text_samples(WorldConfig(), "train", 4)
    phase = ObjectPhase(
        Schedule(steps=2, batch_size=3), objects=(2, 3), short_scenes=16, grounding=LAST_LAYER
    )
    record = train_object_phase(backbone, phase, 0, samples=samples, progress=False)
    assert len(record.losses) == 2 and all("grounding" in p for p in record.parts) and len(spy) == 2
    for pool, dialogues, ids in spy:
        for row, d in enumerate(dialogues):
            n = len(pool[d.scene].sample.scene.objects)
            assert int((ids[row] == backbone.image_token_id).sum()) == n and 2 <= n <= 3
            assert d.context is None and len(d.turns) == 2
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("model.visual."))
    assert any(not torch.equal(before[k], after[k]) for k in after if "language_model.layers." in k)


def test_the_image_layout_asks_about_whole_scenes_and_grounding_moves_the_attention(toy_vlm_spec, spy):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    pool = build_pool(WorldConfig(), "train", 3, ProcessorGrid.of(backbone.processor.image_processor))
    phase = ObjectPhase(
        Schedule(steps=40, batch_size=3, lr=3e-3),
        layout="image",
        questions=2,
        kinds=("colour", "shape"),
        grounding=LAST_LAYER,
    )
    record = train_object_phase(backbone, phase, 0, images=pool, progress=False)
    assert len(spy) == 40
    for seen_pool, dialogues, ids in spy:
        assert seen_pool is pool
        for row, d in enumerate(dialogues):
            rows, cols = pool[d.scene].grid
            assert int((ids[row] == backbone.image_token_id).sum()) == rows * cols
            named = {t.target for t in d.turns} - {None}
            assert named <= set(range(len(pool[d.scene].sample.scene.objects)))
    grounding = np.array([p["grounding"] for p in record.parts])
    # −log(attention mass on the named object's tokens) falls: the answers learn to read the named object.
    assert grounding[-10:].mean() < 0.7 * grounding[:5].mean()
    with pytest.raises(ValueError, match="labelled for the image grid"):
        train_object_phase(backbone, phase, 0)


def test_a_per_turn_phase_trains_on_the_per_turn_loss(toy_vlm_spec, monkeypatch):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    pool = build_pool(WorldConfig(), "train", 2, ProcessorGrid.of(backbone.processor.image_processor))
    averages, real = [], language.answer_loss

    def answer_loss(backbone, batch, cache, per="token"):
        averages.append(per)
        return real(backbone, batch, cache, per)

    monkeypatch.setattr(language, "answer_loss", answer_loss)
    for per in ("turn", "token"):
        phase = ObjectPhase(
            Schedule(steps=2, batch_size=2), layout="image", questions=2, grounding=LAST_LAYER, loss_per=per
        )
        train_object_phase(backbone, phase, 0, images=pool, progress=False)
    assert averages == ["turn", "turn", "token", "token"]


def test_a_share_of_the_image_layouts_sequences_gives_the_scene_in_words(toy_vlm_spec, spy):
    """`words`: those sequences carry the scene's text in the image's place, the phase's question count and
    the format turn last; the rest are the image layout's, grounded as before (the words rows have no image
    tokens to attend to)."""
    from segcompass.pretrain.dialogue import scene_text

    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    pool = build_pool(WorldConfig(), "train", 3, ProcessorGrid.of(backbone.processor.image_processor))
    phase = ObjectPhase(
        Schedule(steps=6, batch_size=4), layout="image", questions=2, grounding=LAST_LAYER, words=0.5
    )
    record = train_object_phase(backbone, phase, 0, images=pool, progress=False, num_slots=2)
    assert all("grounding" in p for p in record.parts)
    in_words = [d for _, dialogues, _ in spy for d in dialogues if d.context is not None]
    on_images = [d for _, dialogues, _ in spy for d in dialogues if d.context is None]
    assert 4 <= len(in_words) <= 20 and on_images  # about half of 24
    for d in in_words:
        sample = pool[d.scene].sample
        assert d.context == scene_text(sample) and len(d.turns) == 3
        assert (d.turns[-1].kind, d.turns[-1].question) == ("format", sample.instruction)
    for _, dialogues, ids in spy:
        for row, d in enumerate(dialogues):
            tokens = int((ids[row] == backbone.image_token_id).sum())
            assert tokens == (0 if d.context is not None else np.prod(pool[d.scene].grid))
    # words=0 draws nothing extra: the batches equal a phase without the field.
    spy.clear()
    train_object_phase(backbone, replace(phase, words=0.0), 0, images=pool, progress=False, num_slots=2)
    first = [d for _, dialogues, _ in spy for d in dialogues]
    spy.clear()
    train_object_phase(backbone, replace(phase, words=0.0), 0, images=pool, progress=False, num_slots=2)
    assert [d for _, dialogues, _ in spy for d in dialogues] == first and all(
        d.context is None for d in first
    )


def test_the_image_layout_can_ask_the_format_turn_and_only_it_can(toy_vlm_spec, spy):
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    pool = build_pool(WorldConfig(), "train", 3, ProcessorGrid.of(backbone.processor.image_processor))
    phase = ObjectPhase(
        Schedule(steps=3, batch_size=3), layout="image", questions=1, kinds=("format",), grounding=Grounding()
    )
    train_object_phase(backbone, phase, 0, images=pool, progress=False, num_slots=2)
    for _, dialogues, _ in spy:
        for d in dialogues:
            (turn,) = d.turns
            sample = pool[d.scene].sample  # the whole scene's own instruction and reasoning
            assert (turn.kind, turn.question) == ("format", sample.instruction)
            assert turn.answer == f"<think>{sample.reasoning}</think><REF_POS><REF_POS>"
    with pytest.raises(ValueError, match='"format" turn needs the "image" layout'):
        ObjectPhase(layout="objects", kinds=("colour", "format"))
    with pytest.raises(ValueError, match='cannot include "format"'):
        StackConfig(recall=RecallPhase(kinds=("colour", "format")))
