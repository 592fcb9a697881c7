"""`segcompass pretrain`: its flags map one-to-one onto the stack's config and are documented in --help."""

from __future__ import annotations

import dataclasses

import pytest

from segcompass.cli import main
from segcompass.pretrain.command import PretrainCommandConfig, stack_config
from segcompass.pretrain.stack import StackConfig


def test_flags_set_the_stack_config_and_leave_the_rest_at_defaults():
    flags = PretrainCommandConfig(seed=2, text_steps=4, vision_steps=5, align_steps=6, instruct_steps=7)
    config = stack_config(flags)
    default = StackConfig()
    steps = (config.text.steps, config.vision.steps, config.align.steps, config.instruct.steps)
    assert (config.seed, *steps) == (2, 4, 5, 6, 7)
    assert config.text.batch_size == default.text.batch_size
    assert stack_config(PretrainCommandConfig(align_trains="merger")).align_trains == "merger"
    assert config.vision.lr == default.vision.lr and config.instruct.batch_size == default.instruct.batch_size
    assert stack_config(PretrainCommandConfig()) == default
    grounded = stack_config(PretrainCommandConfig(grounding_weight=0.25))
    assert grounded.grounding.weight == 0.25 and grounded.grounding.layers == default.grounding.layers
    assert grounded.instruct_stage() != default.instruct_stage()  # a new stage-3 key …
    assert grounded.align_stage() == default.align_stage()  # … and nothing before it
    recall = stack_config(PretrainCommandConfig(recall_steps=9)).recall
    assert recall.schedule.steps == 9 and recall.schedule.batch_size == default.recall.schedule.batch_size
    assert recall.objects == default.recall.objects and not recall.name_with_size
    assert stack_config(
        PretrainCommandConfig(recall_steps=9, recall_name_with_size=True)
    ).recall.name_with_size
    phases = stack_config(PretrainCommandConfig(object_recall_steps=11, object_image_steps=12))
    assert (phases.object_recall.schedule.steps, phases.object_image.schedule.steps) == (11, 12)
    assert phases.object_recall.layout == "objects" and phases.object_image.layout == "image"
    assert phases.object_image.schedule.batch_size == default.object_image.schedule.batch_size
    assert phases.text_stage()["object_image"]["schedule"]["steps"] == 12
    tuned = stack_config(PretrainCommandConfig(tower_tuning_steps=13, tower_tuning_oracle_weight=0.5))
    assert (tuned.tower_tuning.schedule.steps, tuned.tower_tuning.oracle_weight) == (13, 0.5)
    assert tuned.tower_tuning.schedule.lr == default.tower_tuning.schedule.lr
    final = stack_config(PretrainCommandConfig(vision_final_steps=9))
    assert final.vision_final.steps == 9 and final.vision_final.lr == default.vision_final.lr
    assert default.vision_final.steps == 4000
    assert final.vision_stage() == default.vision_stage() and final.align_stage() != default.align_stage()
    reasoned = stack_config(PretrainCommandConfig(reasoning_steps=7, reasoning_words=0.25))
    assert (reasoned.reasoning.schedule.steps, reasoned.reasoning.words) == (7, 0.25)
    assert reasoned.reasoning.kinds == default.reasoning.kinds and default.reasoning.schedule.steps == 6400
    assert tuned.align_stage() != default.align_stage() and tuned.text_stage() == default.text_stage()
    slots = stack_config(PretrainCommandConfig(num_slots=3))
    assert slots.num_slots == 3 and slots.text_stage() != default.text_stage()  # K is in the key from stage 0
    last = stack_config(PretrainCommandConfig(format_first=0.0))
    assert last.format_first == 0.0 and last.instruct_stage() != default.instruct_stage()
    assert last.align_stage() == default.align_stage()
    assert "slot_grounding" not in default.instruct_stage()  # off: the committed stage 3 keeps its key
    slot_read = stack_config(PretrainCommandConfig(slot_grounding=True))
    assert slot_read.slot_grounding and slot_read.instruct_stage() != default.instruct_stage()
    assert slot_read.align_stage() == default.align_stage()
    assert StackConfig.from_stage(slot_read.instruct_stage()).slot_grounding
    assert not StackConfig.from_stage(default.instruct_stage()).slot_grounding


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(PretrainCommandConfig):
        assert f"--{f.name}" in text or f"--{f.name.replace('_', '-')}" in text, f.name
    assert "Stage 1 optimiser steps" in text
