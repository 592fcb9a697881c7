"""The CUDA paths of training and evaluation (skipped without a GPU; CI has none).

Run on a GPU machine with ``pytest tests/test_cuda.py``: the policy forward, the head and the joint step on
CUDA against the same computation on the CPU, a bf16 policy (with and without LoRA), the training loop's
save / resume / load across devices, FSDP2 over one NCCL rank against the unsharded step, and greedy
evaluation. TF32 is off, so fp32 results may differ from the CPU's by kernel order only.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from _training_common import (
    forward_backward,
    fsdp_update_vs_unsharded,
    open_world,
    teacher_forced,
    tiny_model,
    tiny_train_config,
    world_data,
)

from segcompass.evaluation.model_predictor import SegCompassPredictor
from segcompass.head import build_optimizer
from segcompass.model import load_model
from segcompass.model.lora import LoraSettings
from segcompass.training import joint_step, setup_trainable, train_joint
from segcompass.training.batches import SampleSource
from segcompass.training.loop import build_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _exact_fp32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return world_data(tmp_path_factory.mktemp("world"))


def test_policy_and_head_on_cuda_match_the_cpu(data: Path) -> None:
    cpu, gpu = tiny_model(), tiny_model().cuda()  # same seed: same weights
    _, out_c, grads_c = forward_backward(cpu, data)
    ro_g, out_g, grads_g = forward_backward(gpu, data)
    assert ro_g.response_ids.is_cuda and ro_g.token_types.is_cuda and ro_g.prompt_inputs["input_ids"].is_cuda
    assert out_g.head.slot_masks.is_cuda
    close = dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out_g.states.logp.cpu(), out_c.states.logp, **close)
    torch.testing.assert_close(out_g.states.hook_states.cpu(), out_c.states.hook_states, **close)
    torch.testing.assert_close(
        out_g.states.concentration_states.cpu(), out_c.states.concentration_states, **close
    )
    torch.testing.assert_close(out_g.head.slot_masks.cpu(), out_c.head.slot_masks, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out_g.head.losses.total.cpu(), out_c.head.losses.total, rtol=1e-3, atol=1e-4)
    assert grads_g.keys() == grads_c.keys()
    for name in grads_c:
        torch.testing.assert_close(grads_g[name], grads_c[name], rtol=2e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_bf16_policy_trains_post_hook_layers_and_head_only(data: Path, lora_rank: int) -> None:
    model = tiny_model().cuda()
    model.llm.to(torch.bfloat16)  # the head stays fp32
    cfg = tiny_train_config(data / "unused", lora=LoraSettings(lora_rank=lora_rank))
    groups = setup_trainable(model, cfg)
    trainable = {id(p) for g in groups for p in g["params"]}
    batch = SampleSource(open_world(data, "train"), model.head).get([0, 1])
    torch.manual_seed(0)
    result = joint_step(model, model, build_reference(model, cfg), build_optimizer(groups), batch, cfg, 0,
                        [p for g in groups for p in g["params"]])  # fmt: skip
    assert math.isfinite(result.loss) and math.isfinite(result.metrics["grad_norm"])
    # Sampled responses of a random policy rarely hold <REF_POS> and get equal rewards (zero advantages);
    # teacher-forced ones do hold it, so L_seg and the log-probs reach the post-hook blocks through e_k.
    model.zero_grad(set_to_none=True)
    forward_backward(model, data)
    with_grad = {n: p for n, p in model.named_parameters() if p.grad is not None}
    assert all(id(p) in trainable for p in with_grad.values())  # nothing frozen gets a gradient
    assert all(bool(torch.isfinite(p.grad).all()) for p in with_grad.values())
    hook = model.backbone.hook_layer
    blocks = [
        n
        for n, p in with_grad.items()
        if n.startswith("llm.") and "layers." in n and bool(p.grad.abs().sum() > 0)
    ]
    assert blocks and all(int(n.split("layers.")[1].split(".")[0]) >= hook for n in blocks)
    if lora_rank:
        assert all("lora_" in n for n in with_grad if n.startswith("llm."))
    else:
        assert all(with_grad[n].grad.dtype == torch.bfloat16 for n in blocks)
    head = [n for n, p in with_grad.items() if n.startswith("head.") and bool(p.grad.abs().sum() > 0)]
    assert any(n.startswith("head.codebook") for n in head) and any(
        n.startswith("head.mask_head") for n in head
    )


def test_train_joint_on_cuda_resumes_and_loads_on_the_cpu(data: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config(tmp_path / "run", steps=2, head_ema_decay=0.5)
    model = tiny_model()
    res = train_joint(cfg, model, open_world(data, "train"), progress=False)
    assert next(model.parameters()).is_cuda
    assert res.history.drop(columns=["step"]).map(math.isfinite).all().all()
    longer = train_joint(
        dataclasses.replace(cfg, steps=3), tiny_model(), open_world(data, "train"), progress=False
    )
    assert longer.resumed_from == 2
    loaded_gpu = load_model(tmp_path / "run", device="cuda")
    loaded_cpu = load_model(tmp_path / "run", device="cpu")
    outs = []
    for m in (loaded_gpu, loaded_cpu):
        m.eval()
        with torch.no_grad():
            ro, emb, _ = teacher_forced(m, data)
            outs.append(m(ro, emb).head)
    torch.testing.assert_close(outs[0].slot_masks.cpu(), outs[1].slot_masks, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(outs[0].slot_confidence.cpu(), outs[1].slot_confidence, rtol=1e-3, atol=1e-4)


def test_fsdp2_on_one_nccl_rank_matches_the_unsharded_update(data: Path, tmp_path: Path) -> None:
    weights, expected, sampled_loss = fsdp_update_vs_unsharded(data, tmp_path, "cuda", "nccl")
    assert math.isfinite(sampled_loss)
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_greedy_evaluation_on_cuda_agrees_with_the_cpu(data: Path) -> None:
    samples = [open_world(data, "val")[i] for i in range(4)]
    preds = [SegCompassPredictor(m).predict(samples) for m in (tiny_model().cuda(), tiny_model())]
    same = [g.response == c.response for g, c in zip(*preds, strict=True)]
    assert sum(same) >= 3, [p.response for p in preds[0]]  # argmax near-ties may flip a token
    for g, c, s in zip(*preds, same, strict=True):
        assert not g.slot_masks.is_cuda
        if s:
            torch.testing.assert_close(g.slot_masks, c.slot_masks, rtol=1e-3, atol=1e-3)
