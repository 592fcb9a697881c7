"""Warm-up stage: examples, response masks, the format target, training, determinism, the cache, the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.cli import main as analyze_main
from segcompass.backbones import TokenType, build_tiny, resolve_backbone
from segcompass.backbones.warm import warm_folder
from segcompass.cli import main as model_main
from segcompass.stages import StageMissing
from segcompass.warmup import (
    POSITIONS,
    QUESTION_TYPES,
    WarmupConfig,
    build_eval_set,
    build_scenes,
    cache_path,
    encode,
    format_ok,
    format_response,
    make_example,
    mean_response_loss,
    question_example,
    train,
    warm_up,
)
from segcompass.warmup import cache as cache_module
from segcompass.warmup.tasks import describe_example, format_example, format_reasoning
from segcompass.world import COLOURS, SHAPES, WorldConfig, generate_sample
from segcompass.world.language import referring_expression
from segcompass.world.scene import Scene, SceneObject, WorldSample

# A budget that trains in a few seconds.
TINY_RUN = dict(steps=3, batch_size=4, train_scenes=8, val_scenes=3, format_eval=1, max_new_tokens=8)


def _obj(i: int, shape: str, colour: str, size: str, cx: float, cy: float) -> SceneObject:
    return SceneObject(i, shape, colour, size, cx, cy, 20.0, 20.0, 900.0, i, COLOURS[colour])


def _hand_sample() -> WorldSample:
    """300 x 300: a small red star top left, a large red circle at the centre, a blue circle bottom right."""
    objects = [
        _obj(0, "star", "red", "small", 40, 40),
        _obj(1, "circle", "red", "large", 150, 150),
        _obj(2, "circle", "blue", "small", 260, 270),
    ]
    return WorldSample(
        sample_id="hand-0", split="train", index=0, image=Image.new("RGB", (300, 300), (90, 90, 90)),
        scene=Scene(300, 300, objects, "a plain grey background"), masks=np.zeros((3, 300, 300), bool),
        instruction="Segment the red star.", kind="plain", target_ids=[0],
        reasoning="Red stars: the small red star at the top left. So the target is it.",
        description="A small red star at the top left, a large red circle at the centre and a small blue circle at the bottom right, on a plain grey background.",
    )  # fmt: skip


def _all_questions(sample: WorldSample, qtype: str, tries: int = 60) -> dict[str, str]:
    rng = np.random.default_rng(0)
    found = {}
    for _ in range(tries):
        ex = question_example(sample, qtype, rng)
        if ex is not None:
            found[ex.prompt] = ex.response
    return found


def test_questions_on_a_hand_built_scene():
    sample = _hand_sample()
    assert _all_questions(sample, "colour") == {
        "What colour is the star?": "red",
        "What colour is the large circle?": "red",
        "What colour is the small circle?": "blue",
    }
    assert _all_questions(sample, "shape") == {
        "What shape is the small red one?": "star",
        "What shape is the large red one?": "circle",
        "What shape is the blue one?": "circle",
    }
    assert _all_questions(sample, "position") == {
        "In which part of the image is the red star?": "top left",
        "In which part of the image is the red circle?": "centre",
        "In which part of the image is the blue circle?": "bottom right",
    }
    counts = _all_questions(sample, "count", tries=200)
    assert counts["How many red shapes are there?"] == "2"
    assert counts["How many circles are there?"] == "2"
    assert counts["How many stars are there?"] == "1"
    assert all(v == "0" for k, v in counts.items() if "green" in k or "hexagons" in k)
    assert describe_example(sample).response == sample.description
    assert describe_example(sample).prompt == "Describe the image."


def _matches(sample: WorldSample, words: list[str]) -> list[SceneObject]:
    def ok(o: SceneObject) -> bool:
        return all(w in (o.size_name, o.colour, o.shape) for w in words)

    return [o for o in sample.scene.objects if ok(o)]


def test_answers_match_the_scene_graph_on_generated_samples():
    """Re-derive every answer from the scene graph by parsing the question (independent of tasks.py)."""
    rng = np.random.default_rng(1)
    seen = set()
    for index in range(12):
        sample = generate_sample(WorldConfig(), "train", index)
        w, h = sample.scene.width, sample.scene.height
        for qtype in QUESTION_TYPES:
            ex = question_example(sample, qtype, rng)
            if ex is None:
                continue
            seen.add(qtype)
            assert ex.response in ex.candidates and ex.task == "qa"
            if qtype == "count":
                words = ex.prompt.removeprefix("How many ").removesuffix(" are there?").split()
                if words[-1] == "shapes":  # "How many red shapes are there?"
                    value = words[0]
                else:  # "How many crosses are there?"
                    (value,) = [s for s in SHAPES if words == [s + "s"] or words == [s + "es"]]
                n = sum(value in (o.colour, o.shape) for o in sample.scene.objects)
                assert ex.response == str(n), ex.prompt
                continue
            pattern = {
                "colour": r"What colour is the (.+)\?",
                "shape": r"What shape is the (.+) one\?",
                "position": r"In which part of the image is the (.+)\?",
            }[qtype]
            (obj,) = _matches(sample, re.fullmatch(pattern, ex.prompt).group(1).split())  # unique referent
            if qtype == "colour":
                assert ex.response == obj.colour
            elif qtype == "shape":
                assert ex.response == obj.shape
            else:
                row = ["top", "", "bottom"][min(2, int(obj.cy * 3 // h))]
                col = ["left", "", "right"][min(2, int(obj.cx * 3 // w))]
                assert ex.response == (f"{row} {col}".strip() or "centre")
                assert ex.response in POSITIONS
    assert seen == set(QUESTION_TYPES)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: tiny models barely use two, and two stall badly when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("qwen2_5_vl", seed=0)


def test_response_mask_covers_only_the_response(tiny):
    sample = generate_sample(WorldConfig(), "train", 3)
    rng = np.random.default_rng(0)
    examples = [make_example(sample, t, rng, num_slots=4) for t in ("qa", "describe", "format")]
    batch = encode(tiny, examples)
    ids, labels = batch.inputs["input_ids"], batch.labels  # [B, T]
    for b, ex in enumerate(examples):
        start = int(batch.prepared.response_start[b])
        supervised = (labels[b] != -100).nonzero().flatten()
        assert supervised.min() == start and supervised.max() == ids.shape[1] - 1
        assert (labels[b, start:] == ids[b, start:]).all() and (labels[b, :start] == -100).all()
        text = tiny.tokenizer.decode(ids[b, start:].tolist(), skip_special_tokens=False)
        assert text == ex.response + tiny.tokenizer.eos_token
        prompt_types = batch.prepared.token_types[b, :start]
        assert (prompt_types == TokenType.IMAGE).any() and (prompt_types == TokenType.INSTRUCTION).any()
        response_types = set(batch.prepared.token_types[b, start:].tolist())
        assert not response_types & {int(TokenType.IMAGE), int(TokenType.INSTRUCTION), int(TokenType.PAD)}


@pytest.mark.parametrize("k", [1, 4, 6])
def test_format_target_has_exactly_k_concentration_tokens_after_think(tiny, k):
    sample = generate_sample(WorldConfig(), "val", 5)
    ex = format_example(sample, k)
    assert ex.prompt == sample.instruction
    assert ex.response == f"<think>{format_reasoning(sample)}</think>" + "<REF_POS>" * k
    v1 = format_example(sample, k, restate_target=False)
    assert v1.response == f"<think>{sample.reasoning}</think>" + "<REF_POS>" * k
    assert format_ok(ex.response, k) and not format_ok(ex.response, k + 1)
    assert not format_ok(ex.response + " more", k) and not format_ok("<think></think>" + "<REF_POS>" * k, k)
    batch = encode(tiny, [ex])
    ids = batch.labels[0][batch.labels[0] != -100]
    tok = tiny.reasoning_token_ids
    close = (ids == tok["</think>"]).nonzero().flatten()
    assert len(close) == 1
    after = ids[int(close) + 1 :]
    assert (after[:k] == tok["<REF_POS>"]).all() and int((ids == tok["<REF_POS>"]).sum()) == k
    assert after[k:].tolist() == [tiny.tokenizer.eos_token_id]
    assert (batch.prepared.token_types[0] == TokenType.CONCENTRATION).sum() == k
    assert format_response("x", k).count("<REF_POS>") == k


def test_training_lowers_heldout_loss_and_trains_every_part():
    config = WarmupConfig(steps=30, batch_size=8, train_scenes=48, val_scenes=12, format_eval=4)
    before = build_tiny(config.family, seed=config.seed, spec=config.tiny_spec())
    val = build_eval_set(config)
    heldout = [e for qs in val.questions.values() for e in qs] + val.formats + val.descriptions[:4]
    scenes = build_scenes(config, "train", config.train_scenes)
    loss0 = mean_response_loss(before, heldout)
    trained = train(config, build_tiny(config.family, seed=config.seed), scenes=scenes, progress=False)
    loss1 = mean_response_loss(trained.backbone, heldout)
    assert len(trained.losses) == 30 and set(trained.tasks) <= {"qa", "describe", "format"}
    assert loss1 < loss0 - 1.0, (loss0, loss1)  # ~6.6 nats at init (uniform over ~1000 tokens)
    old, new = dict(before.model.named_parameters()), dict(trained.backbone.model.named_parameters())
    for part in ("visual.patch_embed", "visual.merger", "language_model.layers.0", "lm_head"):
        names = [n for n in old if part in n]
        assert names and any(not torch.equal(old[n], new[n]) for n in names), part


def test_same_seed_gives_bitwise_identical_weights():
    config = WarmupConfig(**TINY_RUN)
    scenes = build_scenes(config, "train", config.train_scenes)
    a = train(config, scenes=scenes, progress=False).backbone.model.state_dict()
    b = train(config, scenes=scenes, progress=False).backbone.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = train(
        WarmupConfig(**{**TINY_RUN, "seed": 1}), scenes=scenes, progress=False
    ).backbone.model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_cache_key_depends_on_the_config(tmp_path, monkeypatch):
    base = WarmupConfig()
    assert base.key() == WarmupConfig().key() and base.key().startswith("qwen2_5_vl-")
    variants = [
        WarmupConfig(steps=10), WarmupConfig(seed=1), WarmupConfig(lr=1e-3), WarmupConfig(num_slots=6),
        WarmupConfig(tiny={"num_layers": 2}), WarmupConfig(family="llava"), WarmupConfig(bf16=True),
    ]  # fmt: skip
    keys = {v.key() for v in variants}
    assert len(keys) == len(variants) and base.key() not in keys
    assert WarmupConfig.from_json(base.to_json()) == base
    monkeypatch.setenv("SEGCOMPASS_CACHE", str(tmp_path / "env"))
    assert cache_path(base).parent == tmp_path / "env" / "backbones"
    assert cache_path(base, tmp_path / "x").parent == tmp_path / "x" / "backbones"
    assert (
        cache_path(base).name
        == cache_path(base, tmp_path / "x").name
        != cache_path(WarmupConfig(seed=1)).name
    )
    with pytest.raises(ValueError, match="TinySpec"):
        WarmupConfig(tiny={"layers": 2})


def test_cli_trains_then_cache_is_hit_and_logits_match(tmp_path, monkeypatch, capsys):
    trained = {}
    real_train = cache_module.train

    def spy(config, **kwargs):
        trained["result"] = real_train(config, **kwargs)
        return trained["result"]

    monkeypatch.setattr(cache_module, "train", spy)
    argv = ["warmup", "--steps", "3", "--batch-size", "4", "--train-scenes", "8", "--val-scenes", "3"]
    assert model_main([*argv, "--format-eval", "1", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    config = WarmupConfig(steps=3, batch_size=4, train_scenes=8, val_scenes=3, format_eval=1)
    path = cache_path(config, tmp_path)
    assert str(path) in out and "random_init" in out and "trained" in out
    assert (path / "warmup_eval.csv").exists() and (path / "stage.json").exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folders left

    def no_training(*args, **kwargs):
        raise AssertionError("the cache should have been hit")

    monkeypatch.setattr(cache_module, "train", no_training)
    loaded = warm_up(config, tmp_path, progress=False)
    assert loaded.name_or_path == str(path)
    sample = generate_sample(WorldConfig(), "test", 0)
    original = trained["result"].backbone
    batch_a, batch_b = (encode(bb, [describe_example(sample)]) for bb in (original, loaded))
    assert batch_a.inputs.keys() == batch_b.inputs.keys()  # the saved processor prepares the same inputs
    assert all(torch.equal(batch_a.inputs[k], batch_b.inputs[k]) for k in batch_a.inputs)
    with torch.no_grad():
        a = original.model(**batch_a.inputs).logits
        b = loaded.model(**batch_b.inputs).logits
    assert torch.equal(a, b)
    assert analyze_main([*argv, "--format-eval", "1", "--cache-dir", str(tmp_path)]) == 0  # the old name
    captured = capsys.readouterr()
    assert "loaded from cache" in captured.out
    assert "segcompass-analyze warmup is deprecated; use `segcompass warmup`" in captured.err


def test_warm_spec_loads_a_built_warm_up_and_never_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCOMPASS_CACHE", str(tmp_path))

    def no_training(*args, **kwargs):
        raise AssertionError("loading a warm: backbone must not train")

    monkeypatch.setattr(cache_module, "train", no_training)
    with pytest.raises(StageMissing, match=r"build it with `segcompass warmup --family llava --seed 3`"):
        resolve_backbone("warm:llava", seed=3, hook_layer=1)
    # built (here: a tiny backbone saved where the stage's folder is) → loaded through load_backbone
    config = WarmupConfig(family="llava", seed=3)
    folder = cache_path(config)
    build_tiny("llava", seed=5).save(folder)
    (folder / "stage.json").write_text("{}")
    loaded = resolve_backbone("warm:llava", seed=3, hook_layer=1)
    assert loaded.name_or_path == str(folder) and loaded.hook_layer == 1
    with pytest.raises(StageMissing):
        resolve_backbone("warm:llava", seed=4)


def test_warm_up_folders_of_the_previous_layout_still_load(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCOMPASS_CACHE", str(tmp_path))
    config = WarmupConfig(family="llava")
    old = tmp_path / config.key()  # `$SEGCOMPASS_CACHE/<family>-<sha>/`: the previous layout
    build_tiny("llava").save(old)
    (old / "warmup_config.json").write_text(config.to_json())
    (old / "warmup_eval.csv").write_text("model,accuracy\ntrained,1.0\n")
    assert resolve_backbone("warm:llava").name_or_path == str(old)
    assert warm_folder(config) == old


def test_format_reasoning_restates_the_referring_expression_without_its_template():
    world = WorldConfig()
    for i in range(40):
        sample = generate_sample(world, "val", i)
        phrase = referring_expression(sample.instruction)
        assert phrase.startswith(("the ", "every ", "all the ")), sample.instruction
        assert phrase in sample.instruction and len(phrase) >= len(sample.instruction) - len(
            "Please segment ."
        )
        assert format_reasoning(sample) == f"{sample.reasoning} Looking for {phrase}."
    assert referring_expression("Please segment the red circle.") == "the red circle"
    assert (
        referring_expression("Where is the shape left of the blue star?") == "the shape left of the blue star"
    )
    assert referring_expression("Show me all the squares.") == "all the squares"
    assert referring_expression("  the cyan cross ") == "the cyan cross"
    assert referring_expression("a free-form request") == "a free-form request"  # no template: unchanged


def test_v1_configs_load_with_v1_format_responses():
    cfg = WarmupConfig()
    assert cfg.restate_target and WarmupConfig.from_json(cfg.to_json()) == cfg
    data = json.loads(cfg.to_json())
    data.pop("restate_target")
    data["warmup_version"] = 1
    old = WarmupConfig.from_json(json.dumps(data))
    assert not old.restate_target and old.key() != cfg.key()
