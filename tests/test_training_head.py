"""Joint training's options for the head: the gradient its losses send into the LLM, which responses train it,
an EMA of its weights (each against hand-computed or directly computed values)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from _training_common import (
    RESPONSE,
    K,
    grad_sums,
    open_world,
    teacher_forced,
    tiny_model,
    tiny_train_config,
    world_data,
)
from safetensors.torch import load_file

from segcompass.policy import rollouts_from_responses
from segcompass.training import setup_trainable, train_joint
from segcompass.training.batches import SampleSource


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return world_data(tmp_path_factory.mktemp("world"))


def test_head_loss_llm_grad_scales_only_the_gradient_into_the_llm(data: Path) -> None:
    """0: L_seg / L_conf train the head and send nothing into the LLM; ½: half the gradient; same forward."""
    grads, outs = {}, {}
    for scale in (1.0, 0.5, 0.0):
        model = tiny_model()
        cfg = tiny_train_config(data / "unused", objective="seg", head_loss_llm_grad=scale)
        setup_trainable(model, cfg)
        ro, emb, targets = teacher_forced(model, data)
        out = model(ro, emb, targets, llm_grad_scale=cfg.head_loss_llm_grad)
        (out.head.losses.seg + out.head.losses.conf).backward()
        last = model.backbone.decoder_layers[-1]
        grads[scale] = torch.cat(
            [p.grad.flatten() for p in last.parameters() if p.grad is not None] or [torch.zeros(1)]
        )
        outs[scale] = out.head.slot_masks.detach()
        assert any(v > 0 for v in grad_sums(model.head.slot_mapper).values())
    torch.testing.assert_close(outs[0.0], outs[1.0])
    assert float(grads[1.0].abs().sum()) > 0 and float(grads[0.0].abs().sum()) == 0
    torch.testing.assert_close(grads[0.5], 0.5 * grads[1.0])
    with pytest.raises(ValueError, match="head_loss_llm_grad"):
        tiny_train_config(data / "unused", head_loss_llm_grad=1.5)


def test_head_losses_on_complete_responses_only(data: Path) -> None:
    model = tiny_model()
    model.eval()  # no dropout: the two forwards must see the same head
    samples = SampleSource(open_world(data, "train"), model.head).get([0, 1, 2])
    short = "<think>the red one</think><REF_POS>"  # one of the K = 2 concentration tokens
    responses = [RESPONSE, short, RESPONSE]
    ro = rollouts_from_responses(model.backbone, [s.image for s in samples], [s.text for s in samples],
                                 responses, model.policy)  # fmt: skip
    emb, targets = torch.stack([s.embedding for s in samples]), [s.targets for s in samples]
    out = model(ro, emb, targets, loss_responses="complete")
    assert out.states.concentration_found.tolist() == [K, 1, K]
    assert out.head.slot_masks.shape[0] == 3  # the head still runs on every response
    keep = [0, 2]
    ro_kept = rollouts_from_responses(model.backbone, [samples[i].image for i in keep],
                                      [samples[i].text for i in keep], [RESPONSE] * 2, model.policy)  # fmt: skip
    alone = model(ro_kept, emb[keep], [targets[i] for i in keep])
    torch.testing.assert_close(out.head.losses.total, alone.head.losses.total, rtol=1e-5, atol=1e-6)
    everything = model(ro, emb, targets)
    assert not torch.allclose(everything.head.losses.total, out.head.losses.total)
    # the incomplete response sends no gradient through the head's losses
    model.zero_grad(set_to_none=True)
    slots = out.states.concentration_states
    slots.retain_grad()
    out.head.losses.total.backward()
    assert slots.grad[1].abs().sum() == 0 and slots.grad[0].abs().sum() > 0
    none = model(rollouts_from_responses(model.backbone, [samples[1].image], [samples[1].text], [short],
                                         model.policy), emb[:1], targets[1:2], loss_responses="complete")  # fmt: skip
    assert none.head.losses is None
    with pytest.raises(ValueError, match="loss_responses"):
        model(ro, emb, targets, loss_responses="some")
    with pytest.raises(ValueError, match="head_loss_responses"):
        tiny_train_config(data / "unused", head_loss_responses="some")


def test_head_ema_averages_the_head_only_and_survives_a_resume(data: Path, tmp_path: Path) -> None:
    decay = 0.5
    model = tiny_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("head.")}
    cfg = tiny_train_config(tmp_path / "straight", steps=3, head_ema_decay=decay, keep_checkpoints=3)
    train_joint(cfg, model, open_world(data, "train"), progress=False)
    ckpts = sorted((tmp_path / "straight" / "checkpoints").iterdir())
    live = [load_file(c / "trainable.safetensors") for c in ckpts]  # weights after steps 1, 2, 3
    emas = [load_file(c / "ema.safetensors") for c in ckpts]
    head_names = [n for n in live[0] if n.startswith("head.")]
    assert head_names and set(emas[0]) == set(head_names)  # only the head is averaged
    for name in head_names:  # ema_t = decay · ema_{t-1} + (1 − decay) · w_t, ema_0 = the start
        expected = start[name]
        for step in range(3):
            expected = decay * expected + (1 - decay) * live[step][name]
            torch.testing.assert_close(emas[step][name], expected, rtol=1e-5, atol=1e-6)
    final = load_file(tmp_path / "straight" / "final" / "head.safetensors")
    moved = [n for n in head_names if not torch.equal(live[2][n], start[n])]
    assert moved
    for name in moved:  # the run ends at the average, not at the last weights
        assert torch.equal(final[name.removeprefix("head.")], emas[2][name]), name
        assert not torch.equal(final[name.removeprefix("head.")], live[2][name]), name
    for n, p in model.named_parameters():  # the model in memory too; the LLM keeps its last weights
        if n in live[2]:
            assert torch.equal(p.detach(), emas[2][n] if n.startswith("head.") else live[2][n]), n

    first = tiny_train_config(tmp_path / "resumed", steps=2, head_ema_decay=decay)
    train_joint(first, tiny_model(), open_world(data, "train"), progress=False)
    res = train_joint(
        dataclasses.replace(first, steps=3), tiny_model(), open_world(data, "train"), progress=False
    )
    assert res.resumed_from == 2
    again = load_file(tmp_path / "resumed" / "final" / "head.safetensors")
    for k in final:
        assert torch.equal(final[k], again[k]), k
    with pytest.raises(ValueError, match="head_ema_decay"):
        tiny_train_config(tmp_path / "bad", head_ema_decay=1.0)
