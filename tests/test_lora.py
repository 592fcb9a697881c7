"""LoRA (peft) on the post-hook blocks: where the adapters go, what trains, the adapter-free KL reference,
merged saving, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _training_common import RESPONSE, open_world, tiny_model, tiny_train_config, world_data
from peft.tuners.lora import LoraLayer

from segcompass.grpo import joint_loss, policy_loss
from segcompass.model import load_model
from segcompass.model.lora import LoraSettings, adapters_disabled, has_lora
from segcompass.policy import reference_logprobs, rollouts_from_responses
from segcompass.training import joint_step, setup_trainable, train_joint
from segcompass.training.batches import SampleSource
from segcompass.training.loop import build_reference


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return world_data(tmp_path_factory.mktemp("world"))


def _cfg(out: Path, **kw):
    return tiny_train_config(out, lora=LoraSettings(lora_rank=4, lora_alpha=8.0), **kw)


def _rollouts(model, data: Path, n: int = 2):
    samples = SampleSource(open_world(data, "train"), model.head).get(list(range(n)))
    return rollouts_from_responses(model.backbone, [s.image for s in samples], [s.text for s in samples],
                                   [RESPONSE] * n, model.policy)  # fmt: skip


def test_adapters_sit_only_in_the_blocks_after_the_hook(data: Path) -> None:
    model = tiny_model()
    groups = setup_trainable(model, _cfg(data / "unused"))
    bb = model.backbone
    layers = list(bb.decoder_layers)
    for i, block in enumerate(layers):
        n_lora = sum(isinstance(m, LoraLayer) for m in block.modules())
        assert (n_lora > 0) == (i >= bb.hook_layer), f"block {i}: {n_lora} adapter layers"
    vision = [n for n, m in model.llm.named_modules() if isinstance(m, LoraLayer) and "visual" in n]
    assert not vision, vision
    llm = next(g for g in groups if g["name"] == "llm")["params"]
    trainable_llm = {n for n, p in model.llm.named_parameters() if p.requires_grad}
    assert trainable_llm and all(".lora_" in n for n in trainable_llm)
    assert len(llm) == len(trainable_llm)


def test_joint_loss_reaches_the_adapters_and_the_head_not_the_base_weights(data: Path) -> None:
    model = tiny_model()
    cfg = _cfg(data / "unused")
    setup_trainable(model, cfg)
    samples = SampleSource(open_world(data, "train"), model.head).get([0, 1])
    ro = _rollouts(model, data)
    out = model(ro, torch.stack([s.embedding for s in samples]), [s.targets for s in samples])
    pol = policy_loss(out.states.logp, out.states.logp.detach(), None, torch.tensor([1.0, -1.0]),
                      out.states.response_mask, cfg.loss)  # fmt: skip
    joint_loss(pol.pg, 0.0, out.head.losses.seg, out.head.losses.conf, cfg.loss).total.backward()
    hook = model.backbone.hook_layer
    for i, block in enumerate(model.backbone.decoder_layers):
        for n, p in block.named_parameters():
            if ".lora_B" in n:
                assert i >= hook and p.grad is not None and float(p.grad.abs().sum()) > 0, (i, n)
            elif ".lora_" not in n:
                assert p.grad is None, f"base weight {i}.{n} got a gradient"
    assert model.llm.get_output_embeddings().weight.grad is None, "lm_head is frozen under LoRA"
    assert float(model.head.slot_mapper.query.weight.grad.abs().sum()) > 0


def test_one_step_moves_the_head_never_the_base_weights(data: Path, tmp_path: Path) -> None:
    model = tiny_model()
    cfg = _cfg(tmp_path / "run")
    groups = setup_trainable(model, cfg)
    params = [p for g in groups for p in g["params"]]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = build_reference(model, cfg)
    assert not any(True for _ in reference.parameters()), "the LoRA reference must not copy the LLM"
    opt = torch.optim.SGD(params, lr=1.0)
    torch.manual_seed(0)
    joint_step(model, model, reference, opt, SampleSource(open_world(data, "train"), model.head).get([0, 1]),
               cfg, 0, params)  # fmt: skip
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    base_moved = [n for n in moved if n.startswith("llm.") and ".lora_" not in n]
    assert not base_moved, base_moved
    assert any(n.startswith("head.") for n in moved)


def test_reference_is_the_base_model_and_the_policy_starts_equal_to_it(data: Path) -> None:
    plain = tiny_model().eval()
    ro = _rollouts(plain, data)
    with torch.no_grad():
        base_logp = reference_logprobs(plain.llm, ro)
    model = tiny_model().eval()
    cfg = _cfg(data / "unused")
    setup_trainable(model, cfg)
    reference = build_reference(model, cfg)
    with torch.no_grad():
        assert torch.allclose(reference_logprobs(model.llm, ro), base_logp, atol=1e-6)  # B = 0 at init
        for name, p in model.llm.named_parameters():
            if ".lora_B" in name:
                p.normal_(0, 0.5)
        moved_logp = reference_logprobs(model.llm, ro)
        ref_logp = reference_logprobs(reference, ro)
    assert torch.allclose(ref_logp, base_logp, atol=1e-6)
    assert (moved_logp - base_logp).abs().max() > 1e-3
    with adapters_disabled(model.llm):
        pass
    assert torch.allclose(reference_logprobs(model.llm, ro), moved_logp), "adapters must come back on"


def test_saved_lora_model_is_the_merged_network(data: Path, tmp_path: Path) -> None:
    model = tiny_model().eval()
    setup_trainable(model, _cfg(data / "unused"))
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if ".lora_B" in name:
                p.normal_(0, 0.5)
    ro = _rollouts(model, data)
    with torch.no_grad():
        live = reference_logprobs(model.llm, ro)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert not has_lora(loaded.llm)
    with torch.no_grad():
        again = reference_logprobs(loaded.llm, ro)
    assert torch.allclose(again, live, atol=1e-5), float((again - live).abs().max())


def test_lora_run_resumes_from_its_checkpoint(data: Path, tmp_path: Path) -> None:
    ds = open_world(data, "train")
    full = tiny_model()
    train_joint(_cfg(tmp_path / "a", steps=2), full, ds, progress=False)
    part = tiny_model()
    train_joint(_cfg(tmp_path / "b", steps=1), part, ds, progress=False)
    resumed = tiny_model()
    res = train_joint(_cfg(tmp_path / "b", steps=2), resumed, ds, progress=False)
    assert res.resumed_from == 1
    a = dict(full.named_parameters())
    for n, p in resumed.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p, a[n], atol=1e-6), n
