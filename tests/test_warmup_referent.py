"""The warm-up's referent objective: labels from the instruction, the probe loss, its gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segcompass.backbones import TokenType, build_tiny
from segcompass.warmup import WarmupConfig
from segcompass.warmup.encode import encode, forward_outputs
from segcompass.warmup.referent import REFERENT_FIELDS, ReferentProbe, referent_labels, referent_loss
from segcompass.warmup.tasks import format_example
from segcompass.warmup.train import step_loss
from segcompass.world import WorldConfig, generate_sample


def _sample_of_kind(kind: str, plural: bool | None = None):
    for i in range(200):
        s = generate_sample(WorldConfig(), "val", i)
        if s.kind == kind and (plural is None or s.query.plural == plural):
            return s
    raise AssertionError(f"no {kind} sample")


def test_labels_are_the_words_the_instruction_names():
    s = generate_sample(WorldConfig(), "val", 2)  # "… the medium red triangle"
    assert "medium red triangle" in s.instruction
    colour, shape, size, plural = referent_labels(s)
    assert REFERENT_FIELDS["colour"][colour] == "red" and REFERENT_FIELDS["shape"][shape] == "triangle"
    assert REFERENT_FIELDS["size"][size] == "medium" and plural == 0
    multi = _sample_of_kind("multi", plural=True)
    assert referent_labels(multi)[3] == 1
    rel = _sample_of_kind("relational")
    t = rel.query.target
    want = [
        REFERENT_FIELDS[f].index(v or "none")
        for f, v in (("colour", t.colour), ("shape", t.shape), ("size", t.size))
    ]
    assert list(referent_labels(rel)[:3]) == want
    # words the instruction does not state are "none", never the ground truth's attributes
    for f, v in zip(("colour", "shape", "size"), referent_labels(rel)[:3], strict=True):
        assert (REFERENT_FIELDS[f][v] == "none") == (getattr(t, f) is None)
    assert format_example(s, 4).referent == referent_labels(s)


def test_loss_is_the_cross_entropy_over_concentration_tokens_only():
    d = 3
    probe = ReferentProbe(d)
    with torch.no_grad():
        for head in probe.heads.values():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[1] = 2.0  # every field predicts class 1 with logit 2 vs 0 elsewhere
    states = torch.randn(2, 5, d)
    types = torch.full((2, 5), int(TokenType.RESPONSE))
    types[0, 3] = types[0, 4] = types[1, 4] = int(TokenType.CONCENTRATION)
    labels = torch.tensor([[1, 1, 1, 1], [0, 1, 0, 0]])
    out = referent_loss(probe, states, types, labels)
    per_field_n = [len(v) for v in REFERENT_FIELDS.values()]
    expected = []
    for j, n in enumerate(per_field_n):
        lse = math.log(math.exp(2.0) + (n - 1))
        ce = [lse - (2.0 if labels[b, j] == 1 else 0.0) for b in (0, 0, 1)]  # tokens of sample 0, 0, 1
        expected.append(sum(ce) / 3)
    assert out.loss.item() == pytest.approx(float(np.mean(expected)), rel=1e-5)
    assert out.accuracy["shape"] == 1.0 and out.accuracy["colour"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels must be"):
        referent_loss(probe, states, types, labels[:, :2])
    with pytest.raises(ValueError, match="no concentration token"):
        referent_loss(probe, states, torch.full_like(types, int(TokenType.RESPONSE)), labels)


def test_referent_gradient_reaches_the_last_layers_states_and_weight_zero_turns_it_off():
    config = WarmupConfig(steps=1, batch_size=2, train_scenes=2, val_scenes=2)
    bb = build_tiny(config.family, seed=0, spec=config.tiny_spec())
    examples = [format_example(generate_sample(WorldConfig(), "train", i), 4) for i in range(2)]
    probe = ReferentProbe(bb.hidden_size)
    lm_only = step_loss(bb, examples, config, None)
    with_probe = step_loss(bb, examples, config, probe)
    assert with_probe.item() > lm_only.item()
    with_probe.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probe.parameters())
    last_block = [p for n, p in bb.model.named_parameters() if "language_model.layers.3." in n]
    assert last_block and any(p.grad.abs().sum() > 0 for p in last_block)
    # the probe reads exactly the K <REF_POS> states of each example
    batch = encode(bb, examples)
    _, last = forward_outputs(bb, batch, last_states=True)
    assert last.shape[:2] == batch.prepared.token_types.shape
    assert int((batch.prepared.token_types == int(TokenType.CONCENTRATION)).sum()) == 2 * 4
    with pytest.raises(ValueError, match="referent_weight"):
        WarmupConfig(referent_weight=float("nan"))
