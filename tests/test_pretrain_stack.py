"""The staged tiny VLM end to end at toy size: each stage is built once, keyed by everything before it,
loads through `load_backbone`, and trains what it should (language in stage 0, vision in stage 1, language
after; stage 2 starts from stage 1's tower under stage 0's language model)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from _faults import interrupted_on_call
from safetensors.torch import load_file

from segcompass.backbones import load_backbone
from segcompass.pretrain import language
from segcompass.pretrain.grounding import Grounding
from segcompass.pretrain.object_phase import ObjectPhase
from segcompass.pretrain.optim import Schedule
from segcompass.pretrain.stack import (
    ALIGN,
    INSTRUCT,
    REASON,
    TEXT,
    VISION,
    VISION_FINAL,
    StackConfig,
    build_stack,
    stack_folder,
)
from segcompass.pretrain.text import RecallPhase
from segcompass.pretrain.tower_tuning import TowerTuning
from segcompass.pretrain.vision import VisionObjective
from segcompass.stages import StageMissing, build_stage, partial_folder

pytestmark = pytest.mark.slow

TOY = {
    "hidden_size": 64,
    "num_layers": 2,
    "intermediate_size": 128,
    "vision_hidden_size": 32,
    "vision_layers": 2,
    "hook_layer": 1,
    "image_size": 288,
    "min_pixels": 280 * 280,
    "extra": {"vision_config": {"fullatt_block_indexes": [0, 1]}},
}


def _off(phase):
    return replace(phase, schedule=replace(phase.schedule, steps=0))


def toy(**overrides) -> StackConfig:
    base = dict(
        tiny=TOY,
        train_scenes=6,
        val_scenes=3,
        text_scenes=5,
        text=Schedule(steps=2, batch_size=2),
        vision=Schedule(steps=2, batch_size=3),
        align=Schedule(steps=1, batch_size=2),
        instruct=Schedule(steps=2, batch_size=2),
        questions_per_dialogue=2,
        # The toy keeps the stack's earlier chain unless a test asks for more: no object phases, no stages
        # 0b or 1b, stage 2 trained on descriptions, stage 3 without grounding (the default: layers 2–3).
        object_recall=_off(StackConfig().object_recall),
        object_image=_off(StackConfig().object_image),
        reasoning=_off(StackConfig().reasoning),
        vision_final=replace(StackConfig().vision_final, steps=0),
        align_trains="language",
        grounding=Grounding(),
    )
    return StackConfig(**{**base, **overrides})


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_stack_builds_each_stage_once_and_keys_follow_the_chain(tmp_path):
    config = toy()
    with pytest.raises(StageMissing, match="segcompass pretrain"):
        stack_folder(config, tmp_path)
    final = build_stack(config, tmp_path)
    assert final == stack_folder(config, tmp_path)
    text = TEXT.path(config.text_stage(), tmp_path)
    vision = VISION.path(config.vision_stage(), tmp_path)
    align = ALIGN.path(config.align_stage(), tmp_path)
    for folder in (text, vision, align, final):
        assert json.loads((folder / "stage.json").read_text())["key"] == folder.name
    backbone = load_backbone(final)
    assert backbone.hidden_size == 64 and backbone.hook_layer == 1

    t, v, a, f = _weights(text), _weights(vision), _weights(align), _weights(final)
    tower = [k for k in v if k.startswith("visual.")]
    language = [k for k in v if k.startswith("model.layers.")]
    assert tower and language
    assert any(not torch.equal(t[k], v[k]) for k in language), "stage 0 trains the language model"
    metrics = json.loads((text / "metrics.json").read_text())
    measures = {(r["model"], r["measure"]) for r in metrics["text_questions"]}
    assert {("trained", "text_colour"), ("random_init", "text_colour_answer_follows_object")} <= measures
    assert not any(m.startswith("oracle_") for _, m in measures), "no object phase, no oracle figures"
    assert all(torch.equal(v[k], f[k]) for k in tower), "stages 2-3 must not move the vision tower"
    assert any(not torch.equal(v[k], a[k]) for k in language), "stage 2 trains the language model"
    assert any(not torch.equal(a[k], f[k]) for k in language), "stage 3 trains the language model"

    # A later stage's change rebuilds only it; an earlier stage's change gives every later stage a new key.
    more = toy(instruct=Schedule(steps=3, batch_size=2))
    assert VISION.key(more.vision_stage()) == VISION.key(config.vision_stage())
    assert ALIGN.key(more.align_stage()) == ALIGN.key(config.align_stage())
    assert INSTRUCT.key(more.instruct_stage()) != INSTRUCT.key(config.instruct_stage())
    other = toy(vision=Schedule(steps=3, batch_size=3))
    assert ALIGN.key(other.align_stage()) != ALIGN.key(config.align_stage())
    assert INSTRUCT.key(other.instruct_stage()) != INSTRUCT.key(config.instruct_stage())
    words = toy(text=Schedule(steps=3, batch_size=2))
    assert TEXT.key(words.text_stage()) != TEXT.key(config.text_stage())
    assert VISION.key(words.vision_stage()) == VISION.key(config.vision_stage())
    assert ALIGN.key(words.align_stage()) != ALIGN.key(config.align_stage())
    assert TEXT.key(other.text_stage()) == TEXT.key(config.text_stage())
    recall = toy(recall=RecallPhase(Schedule(steps=2, batch_size=4)))
    assert TEXT.key(recall.text_stage()) != TEXT.key(config.text_stage())
    # No recall phase: stage 0 keeps the key it had before the phase existed.
    assert "recall" not in config.text_stage()
    assert VISION.key(recall.vision_stage()) == VISION.key(config.vision_stage())


def test_alignment_starts_from_stage_0s_language_model_and_stage_1s_tower(tmp_path):
    config = toy(align=Schedule(steps=0, batch_size=2))
    a = _weights(build_stage(ALIGN, config.align_stage(), tmp_path))
    t = _weights(TEXT.path(config.text_stage(), tmp_path))
    v = _weights(VISION.path(config.vision_stage(), tmp_path))
    tower = [k for k in v if k.startswith("visual.")]
    language = [k for k in v if not k.startswith("visual.")]
    assert all(torch.equal(a[k], v[k]) for k in tower)
    assert all(torch.equal(a[k], t[k]) for k in language)
    assert any(not torch.equal(t[k], v[k]) for k in tower), "stage 0 leaves the tower at random init"


def test_stage_1b_trains_stage_1s_tower_at_the_final_size_and_stage_2_starts_from_it(tmp_path):
    final = Schedule(steps=2, batch_size=2, lr=3e-3)
    config = toy(vision_final=final, align=Schedule(steps=0, batch_size=2))
    without = toy(align=Schedule(steps=0, batch_size=2))
    # Off (0 steps, as in the toy): stage 2 starts from stage 1, with the key it had before stage 1b.
    assert without.tower_stage() == ("vlm-vision", without.vision_stage())
    assert without.align_stage()["previous"] == without.vision_stage()
    assert config.tower_stage() == ("vlm-vision-final", config.vision_final_stage())
    assert config.vision_final_stage()["previous"] == config.vision_stage() == without.vision_stage()
    assert TEXT.key(config.text_stage()) == TEXT.key(without.text_stage())
    assert ALIGN.key(config.align_stage()) != ALIGN.key(without.align_stage())
    assert StackConfig.from_stage(json.loads(json.dumps(config.instruct_stage()))) == replace(
        config, val_scenes=300
    )
    assert StackConfig.from_stage(without.instruct_stage()).vision_final.steps == 0

    a = _weights(build_stage(ALIGN, config.align_stage(), tmp_path))
    folder = VISION_FINAL.path(config.vision_final_stage(), tmp_path)
    f, v = _weights(folder), _weights(VISION.path(config.vision_stage(), tmp_path))
    tower = [k for k in v if k.startswith("visual.")]
    assert all(torch.equal(a[k], f[k]) for k in tower), "stage 2 starts from stage 1b's tower"
    assert any(not torch.equal(f[k], v[k]) for k in tower if k.startswith("visual.blocks."))
    assert any(not torch.equal(f[k], v[k]) for k in tower if k.startswith("visual.merger."))
    assert all(torch.equal(f[k], v[k]) for k in v if not k.startswith("visual.")), "not the language model"
    metrics = json.loads((folder / "metrics.json").read_text())
    probes = {"colour", "shape", "object"}
    assert set(metrics["merged_token_probes"]) == set(metrics["merged_token_probes_stage_1"]) == probes
    assert metrics["merged_token_probes"] != metrics["merged_token_probes_stage_1"]
    assert {"token", "token_object", "outline"} <= set(metrics["final_loss_parts"])
    # The probes are at the final size: the toy's val scenes have ≈ 10 × 10 tokens, not stage 1's 8 × 8.
    n_object_tokens = metrics["merged_token_probes"]["object"]["n_test"]
    assert n_object_tokens == metrics["merged_token_probes_stage_1"]["object"]["n_test"]
    stage_1 = json.loads((VISION.path(config.vision_stage(), tmp_path) / "metrics.json").read_text())
    assert n_object_tokens > stage_1["merged_token_probes"]["object"]["n_test"]
    assert "token_count" not in metrics["final_loss_parts"]

    # Stage 1b with its own objective (a per-token count target added): a stage 1b of its own on the same
    # stage 1; stage 1b without one keeps the key it had before the field.
    counting = replace(config, vision_final_objective=VisionObjective(token_count_weight=1.0))
    assert "vision_final_objective" not in config.vision_final_stage()
    assert "token_count_weight" not in str(config.vision_stage())
    assert counting.vision_stage() == config.vision_stage()
    assert VISION_FINAL.key(counting.vision_final_stage()) != VISION_FINAL.key(config.vision_final_stage())
    assert StackConfig.from_stage(json.loads(json.dumps(counting.instruct_stage()))) == replace(
        counting, val_scenes=300
    )
    counted = build_stage(VISION_FINAL, counting.vision_final_stage(), tmp_path)
    parts = json.loads((counted / "metrics.json").read_text())["final_loss_parts"]
    assert parts["token_count"] > 0
    merger = "visual.merger.mlp.0.weight"
    assert not torch.equal(_weights(counted)[merger], f[merger])  # another objective, another tower


def test_an_oracle_alignment_fits_the_mergers_last_layer_and_nothing_else(tmp_path):
    config = toy(align_trains="oracle")
    a = _weights(build_stage(ALIGN, config.align_stage(), tmp_path))
    t = _weights(TEXT.path(config.text_stage(), tmp_path))
    v = _weights(VISION.path(config.vision_stage(), tmp_path))
    fitted = {"visual.merger.mlp.2.weight", "visual.merger.mlp.2.bias"}
    assert fitted <= a.keys()
    assert all(torch.equal(a[k], v[k]) for k in v if k.startswith("visual.") and k not in fitted)
    assert all(not torch.equal(a[k], v[k]) for k in fitted)
    assert all(torch.equal(a[k], t[k]) for k in t if not k.startswith("visual."))
    metrics = json.loads((ALIGN.path(config.align_stage(), tmp_path) / "metrics.json").read_text())
    fit = metrics["merger_readout"]
    assert fit["relative_error"] < fit["relative_error_before"] and fit["tokens"] > 0


def test_stage_0b_trains_stage_0s_language_model_on_the_reasoning_and_stage_2_adopts_it(tmp_path):
    reasoning = ObjectPhase(
        Schedule(steps=2, batch_size=2),
        layout="image",
        questions=2,
        kinds=("colour", "grounded_format"),
        grounding=Grounding(weight=1.0, layers=(1,)),
        words=0.5,
    )
    config = toy(reasoning=reasoning, align=Schedule(steps=0, batch_size=2))
    without = toy(align=Schedule(steps=0, batch_size=2))
    # Off (0 steps, as in the toy): stage 2 starts from stage 0, with the key it had before stage 0b.
    assert without.language_stage() == ("vlm-text", without.text_stage())
    assert without.align_stage()["language"] == without.text_stage()
    assert config.language_stage() == ("vlm-reason", config.reasoning_stage())
    assert config.reasoning_stage()["previous"] == config.text_stage() == without.text_stage()
    assert VISION.key(config.vision_stage()) == VISION.key(without.vision_stage())
    assert ALIGN.key(config.align_stage()) != ALIGN.key(without.align_stage())
    assert StackConfig.from_stage(json.loads(json.dumps(config.instruct_stage()))) == replace(
        config, val_scenes=300
    )
    assert StackConfig.from_stage(without.instruct_stage()).reasoning.schedule.steps == 0

    a = _weights(build_stage(ALIGN, config.align_stage(), tmp_path))
    folder = REASON.path(config.reasoning_stage(), tmp_path)
    r, t = _weights(folder), _weights(TEXT.path(config.text_stage(), tmp_path))
    language = [k for k in t if not k.startswith("visual.")]
    assert all(torch.equal(a[k], r[k]) for k in language), "stage 2 adopts stage 0b's language model"
    assert any(not torch.equal(r[k], t[k]) for k in language), "stage 0b trains the language model"
    assert all(torch.equal(r[k], t[k]) for k in t if k.startswith("visual.")), "and not the tower"
    metrics = json.loads((folder / "metrics.json").read_text())
    measures = {(row["model"], row["measure"]) for row in metrics["oracle_tokens"]}
    assert {("trained", "reasoning_opening"), ("trained", "colour"), ("stage_0", "format")} <= measures
    with pytest.raises(ValueError, match="reasoning must have layout 'image'"):
        toy(reasoning=ObjectPhase(layout="objects"))


def test_tower_tuning_after_the_fit_moves_the_tower_and_merger_and_not_the_language_model(tmp_path):
    tuning = TowerTuning(
        Schedule(steps=3, batch_size=2, lr=3e-3), questions=2, grounding=Grounding(weight=1.0, layers=(1,))
    )
    config = toy(align_trains="oracle", tower_tuning=tuning)
    fitted_only = toy(align_trains="oracle")
    assert "tower_tuning" not in fitted_only.align_stage()  # off: the key stage 2 had before the field
    assert ALIGN.key(config.align_stage()) != ALIGN.key(fitted_only.align_stage())
    assert StackConfig.from_stage(config.instruct_stage()) == replace(config, val_scenes=300)
    folder = build_stage(ALIGN, config.align_stage(), tmp_path)
    a, fit = _weights(folder), _weights(build_stage(ALIGN, fitted_only.align_stage(), tmp_path))
    t = _weights(TEXT.path(config.text_stage(), tmp_path))
    assert all(torch.equal(a[k], t[k]) for k in t if not k.startswith("visual."))
    moved = {k for k in a if k.startswith("visual.") and not torch.equal(a[k], fit[k])}
    assert any(k.startswith("visual.blocks.") for k in moved) and "visual.merger.mlp.0.weight" in moved
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {"lm", "grounding", "oracle"} == set(metrics["tower_tuning"]["final_loss_parts"])
    with pytest.raises(ValueError, match='align_trains="oracle"'):
        toy(align_trains="language", tower_tuning=tuning)


def test_stack_is_deterministic_for_a_seed(tmp_path):
    a = _weights(build_stack(toy(), tmp_path / "a"))
    b = _weights(build_stack(toy(), tmp_path / "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_stage_continues_from_its_checkpoint_to_the_same_weights(tmp_path, monkeypatch):
    config = toy(instruct=Schedule(steps=3, batch_size=2))
    clean = _weights(build_stack(config, tmp_path / "clean"))
    cache = tmp_path / "resumed"
    build_stage(ALIGN, config.align_stage(), cache)  # the stages before stage 3, uninterrupted
    # the second call of the loss is step 1's
    monkeypatch.setattr(language, "answer_loss", interrupted_on_call(language.answer_loss, 2))
    with pytest.raises(KeyboardInterrupt):
        build_stack(config, cache)
    monkeypatch.undo()
    final = INSTRUCT.path(config.instruct_stage(), cache)
    partial = partial_folder(final)
    assert not final.exists()
    assert [p.name for p in (partial / "loops" / "checkpoints").iterdir()] == ["loop0-step-0000001"]
    resumed = build_stack(config, cache)
    assert resumed == final and not partial.exists() and not (final / "loops").exists()
    weights = _weights(resumed)
    assert weights.keys() == clean.keys() and all(torch.equal(weights[k], clean[k]) for k in clean)


def test_stack_config_round_trips_through_a_stage_config():
    recall = RecallPhase(
        Schedule(steps=5, batch_size=8, min_lr_fraction=1.0), (2, 4), 3, ("colour", "describe")
    )
    config = toy(seed=3, format_probability=0.25, align_trains="merger", text_scenes=7, recall=recall)
    # Every field a stage reads survives (stage 0's through the "language" branch); the held-out split
    # size is the evaluation's, not a stage's.
    assert StackConfig.from_stage(config.instruct_stage()) == replace(config, val_scenes=300)
    assert StackConfig.from_stage(config.text_stage()).text_scenes == 7
    assert StackConfig.from_stage(json.loads(json.dumps(config.text_stage()))).recall == recall
    merger = config.align_stage()
    assert ALIGN.key(merger) != ALIGN.key(replace(config, align_trains="language").align_stage())
    assert merger["language"] == config.text_stage() and merger["previous"] == config.vision_stage()
    # A part that is off stays out of its stage's key, and comes back off, whatever the default says
    # (the object phases default to thousands of steps: a toy stage 0 must not run them).
    assert StackConfig().object_recall.schedule.steps > 0 and "object_recall" not in config.text_stage()
    assert StackConfig.from_stage(config.text_stage()).object_recall == config.object_recall
    assert StackConfig.from_stage(config.text_stage()).object_image.schedule.steps == 0
    last = replace(config, format_first=0.0)
    assert "format_first" not in last.instruct_stage() and "format_first" in config.instruct_stage()
    assert StackConfig.from_stage(last.instruct_stage()) == replace(last, val_scenes=300)
    with pytest.raises(ValueError, match="format_first"):
        StackConfig(format_first=1.5)
    with pytest.raises(TypeError):
        StackConfig(tiny={"no_such_field": 1})
    with pytest.raises(ValueError, match="align_trains"):
        StackConfig(align_trains="tower")


def test_stage_0_with_object_phases_reports_the_oracle_token_figures(tmp_path):
    grounding = Grounding(weight=1.0, layers=(1,), heads="all")  # the toy language model has 2 layers
    config = toy(
        object_recall=ObjectPhase(
            Schedule(steps=2, batch_size=3), objects=(2, 3), short_scenes=8, grounding=grounding
        ),
        object_image=ObjectPhase(Schedule(steps=2, batch_size=2), layout="image", grounding=grounding),
        text=Schedule(steps=0, batch_size=2),
    )
    folder = build_stage(TEXT, config.text_stage(), tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    measures = {(r["model"], r["measure"]) for r in metrics["text_questions"]}
    assert {("trained", "oracle_colour"), ("random_init", "oracle_colour_answer_follows_object")} <= measures
    assert ("trained", "text_colour") in measures and metrics["wall_s"] > 0
