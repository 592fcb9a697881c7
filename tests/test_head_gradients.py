"""Gradient routing through a tiny backbone + head (docs/design.md §4 'trainable')."""

from __future__ import annotations

import pytest
import torch
from _head_common import make_sae
from PIL import Image

from segcompass.backbones import build_tiny
from segcompass.head import HeadConfig, SlotFusion, build_head, freeze_backbone_up_to_hook, head_param_groups


def _grad_norm(params) -> float:
    total = 0.0
    for p in params:
        if p.grad is not None:
            g = p.grad.coalesce()._values() if p.grad.is_sparse else p.grad
            total += float(g.abs().sum())
    return total


def _all_none(params) -> bool:
    return all(p.grad is None for p in params)


def test_gradients_reach_trainable_parts_only() -> None:
    torch.manual_seed(0)
    bb = build_tiny("qwen2_5_vl")
    layer_l, d = bb.hook_layer, bb.hidden_size
    llm_params = freeze_backbone_up_to_hook(bb.model, bb.decoder_layers, layer_l)
    sae = make_sae(d, 1024, apply_b_dec_to_input=False)
    head = build_head(HeadConfig.tiny(d, 1024, num_slots=2, tau=0.05), sae, image_encoder=True)
    groups = head_param_groups(head, 1e-4, llm_params)
    assert [g["name"] for g in groups] == [
        "codebook",
        "heads",
        "sam_prompt_encoder",
        "sam_mask_decoder",
        "llm",
    ]

    images = [Image.new("RGB", (112, 112), c) for c in ("red", "blue")]
    batch = bb.prepare(images, ["find the red circle", "find the blue square"])
    out = bb.model(**batch.inputs, output_hidden_states=True)
    hook = out.hidden_states[layer_l]  # [B, T, D]
    last = out.hidden_states[-1]
    k = head.cfg.num_slots
    concentration = last[:, -k:]  # [B, K, D] stand-in for the concentration-token states
    mask = batch.inputs["attention_mask"].bool().clone()
    mask[:, -k:] = False
    emb = head.embed_images(images)  # frozen SAM encoder
    targets = [torch.zeros(1, 256, 256), torch.zeros(2, 256, 256)]
    targets[0][0, 40:120, 40:120] = 1
    targets[1][0, :60] = 1
    targets[1][1, 200:] = 1
    res = head(hook, mask, concentration, emb.float(), targets)
    assert res.support.num_entries > 0
    res.losses.total.backward()

    assert _grad_norm([head.codebook.weight]) > 0
    for mod in (head.aggregator, head.fusion, head.slot_mapper):
        assert _grad_norm(mod.parameters()) > 0, type(mod).__name__
    assert _grad_norm(head.mask_head.prompt_encoder.mask_downscaling.parameters()) > 0
    assert _grad_norm(head.mask_head.mask_decoder.transformer.parameters()) > 0
    assert _grad_norm(head.mask_head.mask_decoder.output_hypernetworks_mlps[0].parameters()) > 0
    for i, block in enumerate(bb.decoder_layers):
        if i >= layer_l:
            assert _grad_norm(block.parameters()) > 0, f"block {i} (after the hook) got no gradient"
        else:
            assert _all_none(block.parameters()), f"block {i} (up to the hook) got a gradient"
    assert _all_none(sae.parameters())
    assert _all_none(head.image_encoder.parameters())
    assert _all_none(bb.model.get_input_embeddings().parameters())
    trainable = {id(p) for p in llm_params}
    frozen = [p for p in bb.model.parameters() if id(p) not in trainable]
    assert frozen and _all_none(frozen)


def test_fusion_standardises_concentration_states_by_fitted_statistics() -> None:
    torch.manual_seed(0)
    fusion = SlotFusion(d_model=6, d_c=4)
    e = torch.randn(2, 3, 6) * 0.5 + 7.0  # [B, K, D]: a large shared mean, small prompt-specific part
    r = torch.randn(2, 3, 4)
    paper = fusion.act(fusion.linear(fusion.norm(torch.cat([e, fusion.proj(r)], -1))))
    assert torch.allclose(fusion(e, r), paper)  # unfitted: the paper's fusion
    rows = torch.cat([e.flatten(0, 1), torch.zeros(2, 6)])  # two missing-<REF_POS> slots: left out
    fusion.fit_concentration_stats(rows)
    mean, std = e.flatten(0, 1).mean(0), e.flatten(0, 1).std(0)
    assert torch.allclose(fusion.concentration_mean, mean) and torch.allclose(
        fusion.concentration_scale, std + 1e-4
    )
    standard = (e - mean) / (std + 1e-4)
    want = fusion.act(fusion.linear(fusion.norm(torch.cat([standard, fusion.proj(r)], -1))))
    assert torch.allclose(fusion(e, r), want, atol=1e-6)
    assert not torch.allclose(fusion(e, r), paper, atol=1e-3)
    state = fusion.state_dict()  # saved with the head
    assert torch.equal(state["concentration_mean"], mean)
    with pytest.raises(ValueError, match="D=6"):
        fusion.fit_concentration_stats(torch.randn(5, 5))
    with pytest.raises(ValueError, match="at least 2 non-zero"):
        fusion.fit_concentration_stats(torch.cat([torch.randn(1, 6), torch.zeros(4, 6)]))
    with pytest.raises(ValueError, match="NaN"):
        fusion.fit_concentration_stats(torch.full((3, 6), float("nan")))
