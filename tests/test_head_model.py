"""The assembled head: shapes, provenance, prefix supports, bad inputs, SAM I/O, parameter groups."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from _head_common import make_head, make_inputs
from PIL import Image
from safetensors.torch import save_file

from segcompass.head import (
    LR_MULTIPLIERS,
    ConceptSupport,
    HeadConfig,
    ImageEmbeddingCache,
    LossConfig,
    build_head,
    build_optimizer,
    head_param_groups,
    head_registry,
    preprocess_image,
    preprocess_masks,
)


def test_forward_shapes_and_provenance() -> None:
    head = make_head()
    x = make_inputs(head)
    x["concept_token_mask"][1, 4:] = False
    out = head(**x)
    b, k = 2, head.cfg.num_slots
    assert out.slot_heatmaps.shape == out.slot_masks.shape == (b, k, 256, 256)
    assert out.slot_confidence_logits.shape == (b, k) and out.confident.dtype == torch.bool
    assert out.slot_queries.shape == (b, k, head.cfg.d_in) and out.slot_reps.shape == (b, k, head.cfg.d_c)
    assert out.predicted_masks().shape == (b, 256, 256)
    assert out.losses is None and out.matches is None
    for i, prov in enumerate(out.provenance.samples):
        sup = out.support.sample(i)
        assert (
            prov.token_idx.tolist() == sup.token_idx.tolist()
            and prov.atom_idx.tolist() == sup.atom_idx.tolist()
        )
        assert set(prov.concept_tokens.tolist()) == set(sup.token_idx.tolist())
        assert (prov.concept_tokens[prov.entry_concept] == prov.token_idx).all()
        attn = prov.slot_attention
        assert attn is not None and attn.shape == (head.cfg.aggregator_layers, k, prov.concept_tokens.numel())
        assert bool((attn.sum(-1) <= 1 + 1e-5).all()) and bool((attn.sum(-1) > 0).all())
        assert prov.entry_attention().shape == (k, prov.token_idx.numel())
        atoms, scores = prov.atom_scores(slot=0)
        assert set(atoms.tolist()) == set(prov.atom_idx.tolist()) and bool((scores[:-1] >= scores[1:]).all())
    assert int(out.provenance.samples[1].token_idx.max()) < 4


def test_prefix_support_gives_the_same_output() -> None:
    head = make_head().eval()
    x = make_inputs(head)
    full = head(**x)
    prefix = torch.zeros_like(x["concept_token_mask"])
    prefix[:, :7] = True
    pre = head.encode_support(x["hook_states"], prefix)
    out = head(**{**x, "concept_token_mask": ~prefix}, prefix_support=pre)
    torch.testing.assert_close(out.slot_masks, full.slot_masks, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.slot_confidence_logits, full.slot_confidence_logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="overlap"):
        head(**x, prefix_support=pre)


def test_targets_give_matches_and_losses() -> None:
    head = make_head(loss=LossConfig(too_many_targets="drop"))
    x = make_inputs(head)
    t0 = torch.zeros(3, 256, 256)
    t0[0, :50, :50] = t0[1, 100:, 100:] = t0[2, 60:90, :] = 1
    out = head(**x, targets=[t0, torch.zeros(0, 256, 256)])
    assert out.losses is not None and out.matches is not None
    assert out.losses.dropped_targets == [1, 0] and out.losses.num_matched == 2
    assert len(out.matches[0].slot_idx) == 2 and len(out.matches[1].slot_idx) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda x: x.update(hook_states=torch.randn(2, 12, 20)),
            "hidden size 20 does not match the SAE's d_in 16",
        ),
        (
            lambda x: x.update(concentration_states=torch.randn(2, 3, 16)),
            "3 tokens per sample but the head has num_slots=2",
        ),
        (
            lambda x: x.update(image_embeddings=torch.randn(2, 256, 32, 32)),
            r"image_embeddings must have shape \(2, 256, 64, 64\)",
        ),
        (
            lambda x: x["hook_states"].__setitem__((1, 3, 0), float("nan")),
            r"hook_states contain NaN.*\(1, 3\)",
        ),
        (
            lambda x: x["concentration_states"].__setitem__((0, 1, 2), float("nan")),
            "concentration_states contain NaN",
        ),
        (
            lambda x: x["image_embeddings"].__setitem__((0, 0, 0, 0), float("inf")),
            "image_embeddings contain NaN",
        ),
        (
            lambda x: x.update(concentration_states=torch.randn(2, 2, 8)),
            r"concentration_states must be \[B=2, n, D=16\]",
        ),
    ],
)
def test_bad_inputs_are_named(change, message: str) -> None:
    head = make_head()
    x = make_inputs(head)
    change(x)
    with pytest.raises(ValueError, match=message):
        head(**x)


def test_bad_targets_and_config_mismatch() -> None:
    head = make_head()
    x = make_inputs(head)
    with pytest.raises(ValueError, match=r"targets\[0\] must be \[N, 256, 256\]"):
        head(**x, targets=[torch.zeros(1, 64, 64), torch.zeros(0, 256, 256)])
    with pytest.raises(ValueError, match="3 target instances but the head has only 2 slots"):
        head(**x, targets=[torch.zeros(3, 256, 256), torch.zeros(0, 256, 256)])
    with pytest.raises(
        ValueError, match=r"SAE shape \(d_in=16, d_sae=256\) does not match HeadConfig \(d_in=32"
    ):
        build_head(HeadConfig.tiny(32, 256, num_slots=2), head.concepts.sae)


def test_concentration_modes() -> None:
    head = make_head(concentration_mode="broadcast")
    x = make_inputs(head)
    one = x["concentration_states"][:, :1]
    assert torch.equal(head._slot_states(one, 2), one.expand(-1, 2, -1))
    head.cfg = HeadConfig.tiny(16, 256, num_slots=2, concentration_mode="zero_pad")
    s = head._slot_states(one, 2)
    assert torch.equal(s[:, 0], one[:, 0]) and float(s[:, 1].abs().sum()) == 0.0


def test_preprocess_image_and_masks() -> None:
    img = np.zeros((200, 100, 3), dtype=np.uint8)
    img[..., 0] = 255
    sam = preprocess_image(Image.fromarray(img))
    assert (
        sam.pixels.shape == (3, 1024, 1024)
        and sam.input_size == (1024, 512)
        and sam.original_size == (200, 100)
    )
    assert float(sam.pixels[0, 10, 10]) == pytest.approx((255 - 123.675) / 58.395)
    assert float(sam.pixels[:, 10, 600].abs().sum()) == 0.0  # right padding
    m = np.zeros((1, 200, 100), dtype=bool)
    m[0, :100, :] = True  # top half of the image
    out = preprocess_masks(m)
    assert out.shape == (1, 256, 256)
    assert float(out[0, :128, :128].mean()) == 1.0 and float(out.sum()) == 128 * 128


def test_image_embedding_cache_and_sam_checkpoint(tmp_path) -> None:
    head = make_head(image_encoder=True)
    images = [Image.fromarray(np.full((40, 60, 3), c, dtype=np.uint8)) for c in (10, 200)]
    cache = ImageEmbeddingCache(head.image_encoder, tmp_path / "emb", "tiny-random", batch_size=1)
    first = cache.embed(images)
    assert first.shape == (2, 256, 64, 64) and first.dtype == torch.float16 and cache.misses == 2
    again = cache.embed(images[::-1])
    assert cache.hits == 2 and torch.equal(again, first.flip(0))
    files = [f for _, _, fs in os.walk(tmp_path) for f in fs]
    assert len(files) == 2 and all(f.endswith(".safetensors") for f in files)
    assert ImageEmbeddingCache(head.image_encoder, tmp_path / "emb", "other-weights").path_for(
        "ab"
    ) != cache.path_for("ab")

    sd = {f"image_encoder.{k}": v for k, v in head.image_encoder.state_dict().items()}
    sd.update({k: v for k, v in head.mask_head.state_dict().items()})
    torch.save(sd, tmp_path / "sam.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "sam.safetensors"))
    for name in ("sam.pth", "sam.safetensors"):
        other = head_registry["tiny"](
            head.concepts.sae, num_slots=2, image_encoder=True, sam_checkpoint=tmp_path / name
        )
        for (k, a), b in zip(
            other.mask_head.state_dict().items(), head.mask_head.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), k
        assert torch.equal(
            other.image_encoder.patch_embed.proj.weight, head.image_encoder.patch_embed.proj.weight
        )
    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found"):
        build_head(head.cfg, head.concepts.sae, sam_checkpoint=tmp_path / "missing.pth")


def test_param_groups_and_sparse_adamw_equals_dense() -> None:
    heads = [make_head(seed=3, codebook_sparse_grad=s) for s in (True, False)]
    x = make_inputs(heads[0])
    new = []
    for head in heads:
        groups = head_param_groups(head, base_lr=1e-3)
        assert {g["name"]: g["lr"] for g in groups} == {
            n: 1e-3 * LR_MULTIPLIERS[n]
            for n in ("codebook", "heads", "sam_prompt_encoder", "sam_mask_decoder")
        }
        ids = {id(p) for g in groups for p in g["params"]}
        assert not any(id(p) in ids for p in head.concepts.parameters())
        opt = build_optimizer(groups)
        head(**x).slot_masks.sum().backward()
        assert head.codebook.weight.grad.is_sparse == head.cfg.codebook_sparse_grad
        opt.step()
        new.append(head.codebook.weight.detach().clone())
    torch.testing.assert_close(new[0], new[1])
    assert ConceptSupport  # re-exported


def test_empty_support_still_gives_slots() -> None:
    head = make_head()
    x = make_inputs(head)
    x["concept_token_mask"][:] = False
    out = head(**x, targets=[torch.zeros(0, 256, 256)] * 2)
    assert out.support.num_entries == 0 and out.slot_masks.shape == (2, 2, 256, 256)
    assert out.provenance.samples[0].slot_attention.shape == (1, 2, 0)
    out.losses.total.backward()


def test_k_has_one_home_a_head_config_has_no_default_for_it() -> None:
    import inspect

    from segcompass.model import cpu_head_config

    # K is the policy's (PolicyConfig.num_slots): a head config cannot fall back to a K of its own
    for build in (lambda: HeadConfig(d_in=16), lambda: HeadConfig.tiny(16), lambda: HeadConfig.paper(16)):
        with pytest.raises(TypeError, match="num_slots"):
            build()
    with pytest.raises(TypeError, match="num_slots"):
        head_registry["tiny"](make_head().concepts.sae)
    assert inspect.signature(cpu_head_config).parameters["num_slots"].default is inspect.Parameter.empty
    assert HeadConfig.paper(16, num_slots=3).num_slots == HeadConfig.tiny(16, num_slots=3).num_slots == 3
    assert make_head(num_slots=3).aggregator.slot_tokens.shape[0] == 3
