"""Atom attribution and its causal check on constructed heads with known answers (analysis/attribution/core.py,
analysis/attribution/causal.py, analysis/attribution/causal_splice.py, analysis/attribution/support_filter.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _head_common import make_head, make_inputs, make_sae
from sae_lens import StandardSAE, StandardSAEConfig

from analysis.attribution.causal import CausalConfig, ablate_atoms, causal_check, causal_figure
from analysis.attribution.core import AttributionConfig, attribute, attribution_figure, slot_objectives
from analysis.attribution.head_inputs import HeadInputs
from analysis.attribution.support_filter import (
    AtomRemoval,
    check_atoms_in_support,
    scale_atoms,
    transformed_support,
)
from analysis.provenance.core import TokenInfo
from sae.token_types import TokenType
from segcompass.head import HeadConfig, build_head

torch.set_num_threads(1)

D, PLANTED, T = 16, 0, 12


def _inputs(head, batch: int = 1, seq: int = 8, seed: int = 1, dtype=torch.float32) -> HeadInputs:
    x = make_inputs(head, batch=batch, seq=seq, seed=seed)
    return HeadInputs(
        x["hook_states"].to(dtype),
        x["concentration_states"].to(dtype),
        x["image_embeddings"].to(dtype),
        x["concept_token_mask"],
    )


@pytest.fixture(scope="module")
def planted() -> tuple[torch.nn.Module, HeadInputs]:
    """An SAE whose atom i (i < D) is coordinate i of the input (ReLU), a head whose codebook is zero except
    for the planted atom's row — so only that atom feeds any slot — and tokens 0–5 carrying the planted atom
    (value 3) beside four other atoms each (values 1–2, so no removal of one or two atoms empties a token)."""
    sae = StandardSAE(StandardSAEConfig(d_in=D, d_sae=2 * D, apply_b_dec_to_input=False))
    eye = torch.eye(D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    torch.manual_seed(0)
    head = build_head(HeadConfig.tiny(D, 2 * D, num_slots=2, aggregator_layers=2), sae).eval()
    with torch.no_grad():
        row = head.codebook.weight[PLANTED].clone() * 40
        head.codebook.weight.zero_()
        head.codebook.weight[PLANTED] = row
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, T, D)
    for t in range(T):
        x[0, t, torch.randperm(D - 1, generator=g)[:4] + 1] = 1 + torch.rand(4, generator=g)
    x[0, :6, PLANTED] = 3.0
    types = np.array([TokenType.IMAGE] * 4 + [TokenType.INSTRUCTION] * 8)
    rc = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] + [[-1, -1]] * 8)
    tokens = TokenInfo(types, rc, None, ["<i>"] * 4 + [f"w{i}" for i in range(8)])
    inputs = HeadInputs(
        x,
        torch.randn(1, 2, D, generator=g),
        torch.randn(1, 256, 64, 64, generator=g),
        tokens=[tokens],
        sample_ids=["planted"],
    )
    return head, inputs


def test_planted_atom_gets_all_the_attribution(planted) -> None:
    head, inputs = planted
    result = attribute(head, inputs)
    for k in (0, 1):
        rows = result.atoms[result.atoms.slot == k]
        assert rows["atom"].iloc[0] == PLANTED and rows["rank"].iloc[0] == 1
        assert (
            rows["share"].iloc[0] == pytest.approx(np.sign(rows["act_grad"].iloc[0]))
            and rows["act_grad"].iloc[0]
        )
        assert (rows["act_grad"].iloc[1:] == 0).all()  # zero codebook rows: exactly no gradient
        assert rows["n_entries"].iloc[0] == 6 and rows["attention"].notna().all()
    top = result.atoms.iloc[0]
    assert top["fired_at"].startswith("0:image(0,0)") and "4:instruction 'w0'" in top["fired_at"]
    tok = result.tokens[(result.tokens.slot == 0)].set_index("token")
    assert tok.loc[0, "token_type"] == "image" and tok.loc[6, "abs_act_grad"] == 0
    assert set(result.objectives.columns) >= {"value", "region_pixels", "confidence"}
    assert result.top_atoms(0, 1, 2)[0] == PLANTED
    fig = attribution_figure(result)
    assert [t.type for t in fig.data].count("bar") == 4


def test_act_grad_equals_finite_difference_of_scaled_values() -> None:
    """h·∂O/∂h summed over an atom's entries = d/dε O(atom's values × (1 + ε)) at 0; summed over all atoms =
    the change when every value is scaled. Float64 (SAM's positional encoding stays float32)."""
    head = make_head(d_sae=64, aggregator_layers=2).double().eval()
    head.mask_head.prompt_encoder.pe_layer.float()
    inputs = _inputs(head, dtype=torch.float64)
    result = attribute(head, inputs, AttributionConfig(objective="mask", slots=(1,)))
    eps = 1e-4
    atom = result.top_atoms(0, 1, 1)[0]
    every = result.atoms["atom"].unique().tolist()

    def central(atoms: list[int]) -> float:
        vals = []
        with torch.no_grad():
            for f in (1 + eps, 1 - eps):
                out = inputs.forward(head, lambda s, f=f: scale_atoms(s, atoms, f))
                vals.append(float(slot_objectives(out, "mask", result.regions)[0, 1]))
        return (vals[0] - vals[1]) / (2 * eps)

    act_grad = result.atoms.set_index("atom").loc[atom, "act_grad"]
    assert abs(act_grad) > 1e-4
    assert central([atom]) == pytest.approx(act_grad, rel=2e-3)
    assert central(every) == pytest.approx(result.atoms["act_grad"].sum(), rel=2e-3, abs=1e-5)
    assert float(result.entry_scores.sum()) == pytest.approx(result.atoms["act_grad"].sum(), rel=1e-4)


def test_removing_top_atoms_beats_random_on_planted_head(planted) -> None:
    head, inputs = planted
    gt = torch.zeros(2, 256, 256)
    gt[0], gt[1, :128] = 1.0, 1.0  # two GT instances: both slots get a Hungarian match
    inputs = dataclasses.replace(inputs, targets=[gt])
    cfg = CausalConfig(n_atoms=(1, 2), seeds=2, progress=False)
    result = causal_check(head, inputs, cfg=cfg, attribution_cfg=AttributionConfig(slots=(1,)))
    t = result.table
    top = t[t.variant == "top"]
    assert (top.atoms.str.split().str[0] == str(PLANTED)).all()
    none = t[t.variant == "none"]
    assert (none.iou == 1.0).all() and none.objective_abs_change.max() < 1e-2
    # random draws that miss the planted atom change nothing at all (zero codebook rows)
    rnd = t[(t.variant == "random") & ~t.atoms.str.split().apply(lambda a: str(PLANTED) in a)]
    assert len(rnd) and (rnd.iou == 1.0).all()
    assert t.gt_iou_ref.notna().all() and t.gt_iou_ref.nunique() == 1
    s = result.summary.set_index(["n", "metric"])
    assert (1, "gt_iou_drop") in s.index
    for n in (1, 2):
        assert s.loc[(n, "iou_drop"), "top_mean"] > s.loc[(n, "iou_drop"), "random_mean"]
        assert s.loc[(n, "objective_abs_change"), "diff_mean"] > 0.01
        assert s.loc[(n, "objective_abs_change"), "wins"] == 1
    assert len(causal_figure(result.summary).data) == 2 * 4  # top + random per metric panel (with GT)
    row = ablate_atoms(head, inputs, result.attribution, 0, 1, [PLANTED])
    assert row["iou"] == pytest.approx(top[top.n == 1].iou.item())


def test_support_filter_remove_nothing_is_bit_identical() -> None:
    head = make_head(aggregator_layers=2).eval()
    inputs = _inputs(head, batch=2)
    encode = head.concepts.encode
    with torch.no_grad():
        plain = inputs.forward(head)
        same = inputs.forward(head, AtomRemoval({}))
        empty_lists = inputs.forward(head, AtomRemoval({0: [], 1: []}))
    for out in (same, empty_lists):
        for name in ("slot_heatmaps", "slot_confidence_logits", "slot_masks", "slot_queries", "slot_reps"):
            assert torch.equal(getattr(out, name), getattr(plain, name)), name
        assert torch.equal(out.support.values, plain.support.values)
    assert head.concepts.encode == encode and "encode" not in head.concepts.__dict__  # wrapper removed
    # removing atoms of sample 1 drops exactly their entries there, leaves sample 0 untouched
    atoms = plain.support.atom_idx[plain.support.batch_idx == 1][:3].tolist()
    with torch.no_grad():
        cut = inputs.forward(head, AtomRemoval({1: atoms}))
    s1 = cut.support.atom_idx[cut.support.batch_idx == 1]
    assert not torch.isin(s1, torch.tensor(atoms)).any()
    n_removed = int(
        (torch.isin(plain.support.atom_idx, torch.tensor(atoms)) & (plain.support.batch_idx == 1)).sum()
    )
    assert cut.support.num_entries == plain.support.num_entries - n_removed
    assert torch.equal(cut.slot_masks[0], plain.slot_masks[0]) and not torch.equal(
        cut.slot_masks[1], plain.slot_masks[1]
    )
    # the prefix support goes through the same filter
    prefix = head.encode_support(inputs.hook_states)
    with_prefix = HeadInputs(
        inputs.hook_states,
        inputs.concentration_states,
        inputs.image_embeddings,
        torch.zeros_like(inputs.concept_token_mask),
        prefix_support=prefix,
    )
    with torch.no_grad():
        out = with_prefix.forward(head, AtomRemoval({1: atoms}))
    assert torch.equal(out.slot_masks, cut.slot_masks)
    # an error inside the block still restores the concept interface
    with pytest.raises(RuntimeError), transformed_support(head, AtomRemoval({})):
        raise RuntimeError("boom")
    assert "encode" not in head.concepts.__dict__


def test_spliced_ablation_through_the_backbone() -> None:
    from PIL import Image

    from analysis.attribution.causal_splice import BackboneSplicer, ConcentrationInputs, splice_causal_check
    from sae.evaluation.splice import _reconstruct, _Splicer
    from segcompass.backbones import build_tiny

    backbone = build_tiny("qwen2_5_vl", seed=0)
    sae = make_sae(backbone.hidden_size, 256, 0, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.W_enc.mul_(10)  # the tiny backbone's states are small: make some atoms reach tau
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((56, 56, 3)) * 255).astype(np.uint8)) for _ in range(2)]
    prepared = backbone.prepare(
        images, ["where is the red circle", "find it"], ["<think>ok</think><REF_POS><REF_POS>"] * 2
    )
    splicer = BackboneSplicer(backbone, sae)
    plain = splicer.run(prepared.inputs)
    reference = _Splicer(backbone).logits(prepared.inputs, lambda h: _reconstruct(sae, h))
    assert torch.equal(plain.logits, reference)  # nothing removed = the plain-reconstruction splice
    assert torch.equal(plain.hook_spliced, _reconstruct(sae, plain.hook_clean))
    # removing atom j of sample 1 subtracts exactly its decoder contribution there; sample 0 is untouched
    acts = sae.encode(plain.hook_clean[1])
    j = int(acts.abs().sum(0).argmax())
    cut = splicer.run(prepared.inputs, AtomRemoval({1: [j]}))
    assert torch.equal(cut.final[0], plain.final[0]) and torch.equal(cut.hook_clean, plain.hook_clean)
    want = plain.hook_spliced[1] - acts[:, j : j + 1] * sae.W_dec[j]
    torch.testing.assert_close(cut.hook_spliced[1], want, atol=1e-5, rtol=1e-5)
    assert not torch.equal(cut.final[1], plain.final[1])  # later layers see the ablation

    torch.manual_seed(0)
    head = build_head(
        HeadConfig.tiny(backbone.hidden_size, 256, num_slots=2, tau=0.05, aggregator_layers=2), sae
    ).eval()
    make = ConcentrationInputs(prepared.token_types, torch.randn(2, 256, 64, 64), num_slots=2)
    result = splice_causal_check(
        head,
        backbone,
        sae,
        prepared.inputs,
        make,
        CausalConfig(n_atoms=(2,), seeds=1, progress=False),
        AttributionConfig(slots=(0,)),
    )
    t = result.table
    assert sorted(t.variant.unique()) == ["none", "random", "top"] and len(t) == 2 * 3
    assert (t[t.variant == "none"].iou == 1.0).all()
    assert set(result.summary.metric) >= {"iou_drop", "objective_drop"}


def test_bad_inputs_give_clear_errors(planted) -> None:
    head, inputs = planted
    with pytest.raises(ValueError, match=r"slot index\(es\) \[5\] out of range: the head has 2 slots"):
        attribute(head, inputs, AttributionConfig(slots=(5,)))
    result = attribute(head, inputs, AttributionConfig(slots=(0,)))
    with pytest.raises(ValueError, match=r"atom\(s\) \[31\] are not in the support of sample 0"):
        ablate_atoms(head, inputs, result, 0, 0, [PLANTED, 31])
    with pytest.raises(ValueError, match="out of range"):
        ablate_atoms(head, inputs, result, 0, 7, [PLANTED])
    with pytest.raises(ValueError, match="sample index 3 is out of range for a batch of 1"):
        check_atoms_in_support(result.reference.support, 3, [PLANTED])
    with pytest.raises(ValueError, match="n_atoms must be"):
        causal_check(head, inputs, result, CausalConfig(n_atoms=(0,), progress=False))
    empty = HeadInputs(torch.zeros(1, 4, D), inputs.concentration_states, inputs.image_embeddings)
    with pytest.raises(ValueError, match="concept support is empty"):
        attribute(head, empty)
    with pytest.raises(ValueError, match="unknown objective"):
        attribute(head, inputs, AttributionConfig(objective="iou"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concentration_states has 2 samples but hook_states has 1"):
        HeadInputs(inputs.hook_states, torch.zeros(2, 2, D), inputs.image_embeddings)
