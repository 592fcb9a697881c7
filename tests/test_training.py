"""Joint training: what trains, one step's mechanics, save/load, bad input, the command line (the multi-process
and kill -9 cases: test_training_distributed.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from _training_common import (
    K,
    grad_sums,
    open_world,
    teacher_forced,
    tiny_model,
    tiny_train_config,
    world_data,
)
from safetensors.torch import load_file

from segcompass.grpo import joint_loss, policy_loss
from segcompass.head import TooManyTargetsError
from segcompass.training import (
    SegCompassPredictor,
    joint_step,
    load_model,
    setup_trainable,
    train_joint,
)
from segcompass.training.batches import SampleSource
from segcompass.training.loop import build_reference

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return world_data(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("objective", ["joint", "seg"])
def test_gradients_reach_post_hook_layers_and_head_only(data: Path, objective: str) -> None:
    model = tiny_model()
    cfg = tiny_train_config(data / "unused", objective=objective)
    setup_trainable(model, cfg)
    ro, emb, targets = teacher_forced(model, data)
    out = model(ro, emb, targets)
    st = out.states
    if objective == "joint":
        adv = torch.tensor([1.0, -1.0])
        pol = policy_loss(st.logp, st.logp.detach(), None, adv, st.response_mask, cfg.loss)
        pg = pol.pg
    else:
        pg = st.logp.new_zeros(())
    joint_loss(pg, 0.0, out.head.losses.seg, out.head.losses.conf, cfg.loss).total.backward()

    layers = model.backbone.decoder_layers
    hook = model.backbone.hook_layer
    for i, layer in enumerate(layers):
        g = grad_sums(layer)
        if i < hook:
            assert all(v == -1.0 for v in g.values()), f"frozen block {i} got a gradient"
        else:
            assert any(v > 0 for v in g.values()), f"block {i} after the hook got no gradient"
    lm_head = model.llm.get_output_embeddings().weight
    if objective == "joint":
        assert lm_head.grad is not None and float(lm_head.grad.abs().sum()) > 0
    else:  # no policy gradient: only the concentration states carry L_seg into the LLM
        assert lm_head.grad is None or float(lm_head.grad.abs().sum()) == 0
    assert model.llm.get_input_embeddings().weight.grad is None
    visual = [p for n, p in model.llm.named_parameters() if "visual" in n]
    assert visual and all(p.grad is None and not p.requires_grad for p in visual)
    for part in (model.head.concepts, model.head.image_encoder):
        assert all(p.grad is None and not p.requires_grad for p in part.parameters())
    for part in (model.head.codebook, model.head.aggregator, model.head.fusion, model.head.slot_mapper,
                 model.head.mask_head.mask_decoder):  # fmt: skip
        assert any(v > 0 for v in grad_sums(part).values()), type(part).__name__


def test_one_step_changes_exactly_the_trainable_parameters(data: Path, tmp_path: Path) -> None:
    model = tiny_model()
    cfg = tiny_train_config(tmp_path / "run")
    groups = setup_trainable(model, cfg)
    names = {id(p) for g in groups for p in g["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for g in groups for p in g["params"]], lr=1.0)
    source = SampleSource(open_world(data, "train"), model.head)
    torch.manual_seed(0)
    result = joint_step(model, model, build_reference(model, cfg), opt, source.get([0, 1]), cfg, 0,
                        [p for g in groups for p in g["params"]])  # fmt: skip
    assert len(result.texts) == cfg.prompts_per_step * cfg.group_size
    assert {"rollout", "reference", "forward", "reward", "backward", "total"} <= set(result.timings)
    assert 0.0 <= result.metrics["reward/total"] <= 1.0
    for n, p in model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        if id(p) not in names:
            assert not moved, f"frozen parameter {n} changed"
    moved_head = [
        n
        for n, p in model.named_parameters()
        if n.startswith("head.") and not torch.equal(before[n], p.detach())
    ]
    assert any(n.startswith("head.codebook") for n in moved_head) and any(
        n.startswith("head.mask_head") for n in moved_head
    )


def test_rl_objective_leaves_the_head_at_its_initial_weights(data: Path, tmp_path: Path) -> None:
    model = tiny_model()
    head_before = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    res = train_joint(tiny_train_config(tmp_path / "rl", objective="rl", steps=1), model, open_world(data, "train"),
                      progress=False)  # fmt: skip
    assert res.history["loss/seg"].eq(0).all()
    # a finished 1-step run cannot be "resumed" as a shorter one (it would hand back the longer run's model)
    with pytest.raises(ValueError, match="checkpoint at step 1, past steps=0"):
        train_joint(tiny_train_config(tmp_path / "rl", objective="rl", steps=0), model, open_world(data, "train"),
                    progress=False)  # fmt: skip
    for n, p in model.head.named_parameters():
        assert torch.equal(head_before[n], p.detach()), n


def test_saved_model_loads_and_predicts_the_same(data: Path, tmp_path: Path) -> None:
    model = tiny_model().eval()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    val = open_world(data, "val")
    samples = [val[0], val[1]]
    a = SegCompassPredictor(model).predict(samples)
    b = SegCompassPredictor(loaded).predict(samples)
    for x, y in zip(a, b, strict=True):
        assert x.response == y.response
        assert torch.equal(x.slot_masks, y.slot_masks) and torch.equal(x.slot_confidence, y.slot_confidence)
        assert x.slot_masks.shape == (K, 64, 64)
    with pytest.raises(FileNotFoundError, match="no SegCompass model"):
        load_model(tmp_path)


def test_bad_input_gives_clear_errors(data: Path, tmp_path: Path) -> None:
    ds = open_world(data, "train")
    with pytest.raises(ValueError, match="group_size >= 2"):
        tiny_train_config(tmp_path, group_size=1)
    with pytest.raises(ValueError, match="objective"):
        tiny_train_config(tmp_path, objective="both")
    from _head_common import make_sae
    from _training_common import small_head_config

    from segcompass.backbones import build_tiny
    from segcompass.head import build_head
    from segcompass.model import SegCompassModel
    from segcompass.policy import PolicyConfig

    bb = build_tiny("qwen2_5_vl")
    with pytest.raises(ValueError, match="hidden size"):
        SegCompassModel(
            bb, build_head(small_head_config(64, 128), make_sae(64, 128)), PolicyConfig(num_slots=K)
        )
    with pytest.raises(ValueError, match="num_slots"):
        tiny_model(backbone=bb).__class__(bb, tiny_model(backbone=bb).head, PolicyConfig(num_slots=3))
    # More targets than slots: 'error' names the problem.
    from segcompass.head import LossConfig

    strict = tiny_model(loss=LossConfig(switch_step=0, too_many_targets="error"))
    ro, emb, _ = teacher_forced(strict, data)
    too_many = [torch.ones(K + 1, 64, 64), torch.zeros(0, 64, 64)]
    with pytest.raises(TooManyTargetsError, match="slots"):
        strict(ro, emb, too_many)
    # Resuming with another configuration is refused and leaves the checkpoint alone.
    run = tmp_path / "run"
    train_joint(tiny_train_config(run, steps=1), tiny_model(), ds, progress=False)
    ckpt = run / "checkpoints" / "step-00000001" / "trainable.safetensors"
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="another configuration"):
        train_joint(tiny_train_config(run, steps=2, lr=5e-4), tiny_model(), ds, progress=False)
    assert ckpt.read_bytes() == before
    with pytest.raises(FileExistsError, match="resume"):
        train_joint(tiny_train_config(run, steps=2, resume=False), tiny_model(), ds, progress=False)


def test_resume_with_another_sae_or_backbone_is_refused(data: Path, tmp_path: Path) -> None:
    """#23.1: a joint run records the identity of its initial weights per part; a resume with another SAE or
    another backbone behind the same names is refused and names the part."""
    from segcompass.backbones import build_tiny

    ds, run = open_world(data, "train"), tmp_path / "run"
    train_joint(tiny_train_config(run, steps=1), tiny_model(), ds, progress=False)
    ckpt = run / "checkpoints" / "step-00000001" / "trainable.safetensors"
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=r"another configuration \(context\.weights\.head\.concepts: '"):
        train_joint(tiny_train_config(run, steps=2), tiny_model(sae_seed=1), ds, progress=False)
    other_backbone = tiny_model(backbone=build_tiny("qwen2_5_vl", seed=1))
    with pytest.raises(ValueError, match=r"context\.weights\.llm\.model: '"):
        train_joint(tiny_train_config(run, steps=2), other_backbone, ds, progress=False)
    assert ckpt.read_bytes() == before


def test_train_then_evaluate_the_checkpoint_from_the_command_line(data: Path, tmp_path: Path) -> None:
    from _head_common import make_sae

    from segcompass.cli import main

    sae_dir = tmp_path / "sae"
    make_sae(128, 128, apply_b_dec_to_input=False).save_model(str(sae_dir))
    common = ["--data", "grefcoco", "--data-root", str(data)]
    argv = ["train", *common, "--backbone", "tiny:qwen2_5_vl", "--sae", str(sae_dir), "--out", str(tmp_path / "run"),
            "--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "8",
            "--threads", "1", "--sam", "", "--head-warmup-steps", "2", "--head-warmup-samples", "4"]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "run" / "final" / "segcompass_model.json").exists()
    (warm,) = (tmp_path / "run" / "head_warmup").glob("head-warmup-*/head.safetensors")
    assert len(pd.read_csv(warm.with_name("losses.csv"))) == 2  # the head warm start ran its 2 steps
    assert (warm.parent / "stage.json").is_file()
    stamp = warm.stat().st_mtime_ns
    assert main(argv) == 0  # a rerun resumes the finished run and reuses the warm start
    assert warm.stat().st_mtime_ns == stamp and len(list((tmp_path / "run" / "head_warmup").iterdir())) == 1
    argv = ["evaluate", *common, "--split", "val", "--predictor", "checkpoint", "--checkpoint", str(tmp_path / "run"),
            "--out", str(tmp_path / "eval"), "--progress", "false"]  # fmt: skip
    assert main(argv) == 0

    summaries = list((tmp_path / "eval").glob("*.summary.json"))
    assert summaries, list((tmp_path / "eval").iterdir())
    summary = json.loads(summaries[0].read_text())
    assert summary["protocol"]["decoding"] == "greedy" and summary["protocol"]["num_samples"] == 4
    assert str(tmp_path / "run") in json.dumps(summary["protocol"])
    assert main(["train", *common, "--out", str(tmp_path / "x")]) == 2  # no --sae: a clear error, exit 2


def test_a_trained_model_feeds_the_provenance_analyses(data: Path) -> None:
    from analysis.attribution.core import AttributionConfig, attribute
    from analysis.provenance.model_inputs import TrainedModelInputs

    model = tiny_model()
    adapter = TrainedModelInputs(model)
    val = open_world(data, "val")
    inputs = adapter.head_inputs([val[0], val[1]])
    assert inputs.batch_size == 2 and inputs.sample_ids == [val[0].sample_id, val[1].sample_id]
    assert inputs.hook_states.shape[:2] == inputs.concept_token_mask.shape
    assert inputs.concentration_states.shape == (2, K, model.backbone.hidden_size)
    assert [t.shape[1:] for t in inputs.targets] == [(64, 64), (64, 64)]
    assert len(inputs.tokens[0].token_type) == inputs.hook_states.shape[1]
    result = attribute(model.head, inputs, AttributionConfig())
    assert set(result.atoms["slot"]) <= set(range(K)) and len(result.atoms) > 0


def _vowel_share(text: str, mask_probs, confidence, gt) -> float:
    """A custom reward: the share of vowels among the response's characters (spaces left out)."""
    chars = text.replace(" ", "")
    return sum(c in "aeiou" for c in chars) / max(1, len(chars))


def test_grpo_raises_a_custom_reward(data: Path, tmp_path: Path) -> None:
    """The policy-gradient term does its job: on a random tiny policy, 30 RL steps (2 prompts × G 8) move a
    plug-in reward from ~0.32 to > 0.5 (measured: 0.32 → 0.63)."""
    from segcompass.policy import PolicyConfig

    cfg = tiny_train_config(tmp_path / "rl", objective="rl", steps=30, group_size=8, lr=1e-2, checkpoint_every=100,
                            policy=PolicyConfig(num_slots=K, max_new_tokens=12))  # fmt: skip
    res = train_joint(cfg, tiny_model(), open_world(data, "train"), progress=False, reward_fn=_vowel_share)
    reward = res.history["reward/total"]
    first, last = float(reward.head(5).mean()), float(reward.tail(5).mean())
    assert last > first + 0.15, (first, last)
    assert json_fingerprint_mentions(tmp_path / "rl" / "config.json", "_vowel_share")


def json_fingerprint_mentions(path: Path, name: str) -> bool:

    return name in json.loads(path.read_text())["context"]["reward_fn"]


def test_gradient_checkpointing_gives_the_same_gradients(data: Path) -> None:
    grads = []
    for checkpointing in (False, True):
        model = tiny_model()
        setup_trainable(model, tiny_train_config(data / "unused"))
        if checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ro, emb, targets = teacher_forced(model, data)
        out = model(ro, emb, targets)
        (out.states.logp.sum() + out.head.losses.total).backward()
        layer = model.backbone.decoder_layers[-1]
        grads.append(torch.cat([p.grad.flatten() for p in layer.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_saved_model_keeps_the_concentration_standardisation(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_model()
    d = model.head.cfg.d_in
    model.head.fusion.fit_concentration_stats(torch.randn(10, d) * 3 + 5)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    for name in ("concentration_mean", "concentration_scale"):
        assert torch.equal(getattr(loaded.head.fusion, name), getattr(model.head.fusion, name))
    # a model saved before the standardisation existed loads with it off (the paper's fusion)
    state = load_file(str(tmp_path / "m" / "head.safetensors"))
    save_file(
        {k: v for k, v in state.items() if "concentration_" not in k},
        str(tmp_path / "m" / "head.safetensors"),
    )
    old = load_model(tmp_path / "m")
    assert torch.equal(old.head.fusion.concentration_mean, torch.zeros(d))
    assert torch.equal(old.head.fusion.concentration_scale, torch.ones(d))


def test_head_presets_pick_their_geometry_and_refuse_mismatched_sam(tmp_path: Path) -> None:
    from segcompass.model import model_head_config

    cpu, ckpt = model_head_config("cpu", 64, 128, 4, "")
    assert ckpt is None and cpu.sam_encoder.img_size == 256 and cpu.heatmap_size == 64
    sam_file = tmp_path / "sam_vit_h.pth"
    sam_file.write_bytes(b"")
    paper, ckpt = model_head_config("paper", 3584, 65536, 4, str(sam_file))
    assert ckpt == sam_file and paper.sam_encoder.embed_dim == 1280 and paper.sam_encoder.img_size == 1024
    assert (paper.d_in, paper.d_sae, paper.num_slots, paper.heatmap_size) == (3584, 65536, 4, 256)
    with pytest.raises(ValueError, match="ViT-H geometry"):
        model_head_config("paper", 64, 128, 4, "warm")
    with pytest.raises(ValueError, match="needs --head paper"):
        model_head_config("cpu", 64, 128, 4, str(sam_file))
    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found"):
        model_head_config("paper", 64, 128, 4, str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown head preset"):
        model_head_config("huge", 64, 128, 4, "")


def test_k_and_the_sae_width_are_one_edit_each_end_to_end(data: Path, tmp_path: Path, monkeypatch) -> None:
    """K lives in the policy and d_sae in the SAE: build -> train a step -> save -> load follows both."""
    from _head_common import make_sae

    from segcompass.backbones.warm import warm_config
    from segcompass.model import build_model
    from segcompass.policy import PolicyConfig
    from segcompass.stages import StageMissing
    from segcompass.training import step as step_module
    from segcompass.warmup import cache_path

    sae_dir = tmp_path / "sae"
    make_sae(128, 96, apply_b_dec_to_input=False).save_model(str(sae_dir))  # the one edit of the SAE width
    policy = PolicyConfig(num_slots=3, max_new_tokens=12)  # the one edit of K
    model = build_model("tiny:qwen2_5_vl", sae_dir, 0, policy, sam="")
    assert (model.head.cfg.num_slots, model.head.cfg.d_sae) == (3, 96)
    assert model.head.codebook.d_sae == 96
    demanded = []
    real = step_module.compute_reward

    def spy(*args, **kwargs):
        demanded.append(kwargs["expected_tokens"])
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "compute_reward", spy)
    with pytest.raises(ValueError, match="K is set once"):  # no second, silently different K
        train_joint(tiny_train_config(tmp_path / "other", steps=1, policy=PolicyConfig()), model,
                    open_world(data, "train"), progress=False)  # fmt: skip
    result = train_joint(tiny_train_config(tmp_path / "run", steps=1, policy=policy), model,
                         open_world(data, "train"), progress=False)  # fmt: skip
    assert demanded and set(demanded) == {3}  # the format reward demands the policy's K
    loaded = load_model(result.final)
    assert loaded.policy.num_slots == 3 and (loaded.head.cfg.num_slots, loaded.head.cfg.d_sae) == (3, 96)
    assert loaded.head.codebook.d_sae == 96
    # a warmed-up backbone is the one taught to emit the policy's K <REF_POS>
    monkeypatch.setenv("SEGCOMPASS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(StageMissing) as missing:
        build_model("warm:qwen2_5_vl", sae_dir, 0, policy, sam="")
    assert str(cache_path(warm_config("warm:qwen2_5_vl", num_slots=3))) in str(missing.value)
    assert warm_config("warm:qwen2_5_vl", num_slots=3).num_slots == 3
