"""The slot confidence: the paper's query-only MLP and the option that adds the slot's image evidence."""

from __future__ import annotations

import dataclasses
import math

import torch
from _head_common import make_head, make_inputs

from segcompass.head import SlotMapper
from segcompass.model import head_config_from_dict


def test_evidence_by_hand() -> None:
    # one slot, a 2-cell grid: softmax([0, ln 3]) = [1/4, 3/4]
    fused = torch.tensor([[[0.0, math.log(3.0)]]])  # [B=1, K=1, g²=2]
    emb = torch.tensor([[[1.0, 5.0], [2.0, -2.0]]]).view(1, 2, 1, 2)  # [B, C=2, 1, 2]: cells (1, 2), (5, −2)
    ev = SlotMapper._evidence(fused, emb)  # [1, 1, C + 1]
    expected = torch.tensor([[[0.25 * 1 + 0.75 * 5, 0.25 * 2 + 0.75 * -2, math.log(3.0)]]])
    torch.testing.assert_close(ev, expected)


def test_query_only_confidence_is_blind_to_the_image_and_evidence_is_not() -> None:
    for evidence in (False, True):
        head = make_head(conf_evidence=evidence).eval()
        x = make_inputs(head)
        other = dict(x, image_embeddings=torch.randn_like(x["image_embeddings"]))
        with torch.no_grad():
            a, b = head(**x), head(**other)
        assert not torch.allclose(a.slot_heatmaps, b.slot_heatmaps)
        same = torch.allclose(a.slot_confidence_logits, b.slot_confidence_logits)
        assert same != evidence, (
            f"conf_evidence={evidence}: confidence {'ignores' if same else 'reads'} the image"
        )
        assert ("slot_mapper.evidence.weight" in head.state_dict()) == evidence


def test_confidence_loss_trains_the_evidence_projection() -> None:
    head = make_head(conf_evidence=True)
    x = make_inputs(head)
    out = head(**x)
    out.slot_confidence_logits.square().sum().backward()
    ev = head.slot_mapper.evidence
    assert ev.weight.grad is not None and ev.weight.grad.abs().sum() > 0
    # the pooled embedding is read through the slot's attention: the key map gets gradient from it too
    assert head.slot_mapper.key.weight.grad.abs().sum() > 0


def test_config_round_trip_keeps_the_option() -> None:
    cfg = make_head(conf_evidence=True).cfg
    back = head_config_from_dict(dataclasses.asdict(cfg))
    assert back.conf_evidence is True and back == cfg
    old = dataclasses.asdict(cfg)
    del old["conf_evidence"]  # a model saved before the option existed loads with the paper's confidence
    assert head_config_from_dict(old).conf_evidence is False
