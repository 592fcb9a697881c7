"""Concept interface: support = thresholded dense SAE encode, top-N cap, gradients, input errors."""

from __future__ import annotations

import pytest
import torch
from _head_common import make_sae
from sae_lens import GatedSAE, GatedSAEConfig

from segcompass.head import ConceptInterface, ConceptSupport, SupportCache


def _dense_entries(acts: torch.Tensor, keep: torch.Tensor) -> set[tuple[int, int, int]]:
    return {tuple(x) for x in keep.nonzero().tolist()}


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_support_equals_thresholded_dense_encode(apply_b_dec: bool) -> None:
    sae = make_sae(16, 256, apply_b_dec_to_input=apply_b_dec)
    ci = ConceptInterface(sae, tau=0.8, chunk_tokens=3)  # chunks split samples: boundaries are exercised
    x = torch.randn(2, 7, 16) * 2
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 1] = mask[1, 5] = False
    s = ci.encode(x, mask)
    with torch.no_grad():
        acts = sae.encode(x)  # [2, 7, 256] dense reference
    keep = (acts.abs() >= 0.8) & mask[..., None]
    assert s.num_entries == int(keep.sum()) > 0
    got = set(zip(s.batch_idx.tolist(), s.token_idx.tolist(), s.atom_idx.tolist(), strict=True))
    assert got == _dense_entries(acts, keep)
    torch.testing.assert_close(s.values, acts[s.batch_idx, s.token_idx, s.atom_idx])
    key = (s.batch_idx * 7 + s.token_idx) * 256 + s.atom_idx
    assert bool((key[1:] > key[:-1]).all()), "entries must be sorted by (sample, token, atom)"
    torch.testing.assert_close(s.to_dense(7, 256), torch.where(keep, acts, 0.0))


def test_top_n_cap_keeps_the_largest_entries_per_token() -> None:
    sae = make_sae(16, 256)
    x = torch.randn(2, 5, 16) * 2
    ci = ConceptInterface(sae, tau=0.5, top_n=3, chunk_tokens=4)
    s = ci.encode(x)
    with torch.no_grad():
        acts = sae.encode(x)
    for b in range(2):
        for t in range(5):
            a = acts[b, t]
            above = (a.abs() >= 0.5).nonzero().flatten()
            expect = above[a[above].abs().argsort(descending=True)[:3]].sort().values
            sel = (s.batch_idx == b) & (s.token_idx == t)
            assert s.atom_idx[sel].tolist() == expect.tolist()
    counts = torch.bincount(s.batch_idx * 5 + s.token_idx)
    assert int(counts.max()) == 3


@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_value_gradients_equal_dense_autograd(norm: str) -> None:
    sae = make_sae(16, 256, normalize_activations=norm)
    ci = ConceptInterface(sae, tau=0.5, chunk_tokens=4)
    x = (torch.randn(2, 6, 16) * 2).requires_grad_(True)
    s = ci.encode(x)
    w = torch.randn(s.num_entries)
    (s.values * w).sum().backward()
    g_sparse = x.grad.clone()
    x.grad = None
    acts = sae.encode(x)  # dense, autograd through the SAE
    probe = torch.zeros_like(acts).index_put((s.batch_idx, s.token_idx, s.atom_idx), w)
    (acts * probe).sum().backward()
    torch.testing.assert_close(g_sparse, x.grad, rtol=1e-4, atol=1e-5)
    assert sae.W_enc.grad is None, "the SAE is frozen"


def test_hidden_size_mismatch_and_nan_are_named() -> None:
    ci = ConceptInterface(make_sae(16, 64), tau=0.5)
    with pytest.raises(ValueError, match=r"hidden size 12 does not match the SAE's d_in 16"):
        ci.encode(torch.randn(1, 3, 12))
    x = torch.randn(1, 3, 16)
    x[0, 2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*\(sample, token\)=\(0, 2\)"):
        ci.encode(x)
    # a NaN at a token that is not selected is not read
    ci.encode(x, torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match="concept_token_mask"):
        ci.encode(torch.randn(1, 3, 16), torch.ones(1, 4, dtype=torch.bool))


def test_unsupported_sae_architecture_is_refused() -> None:
    gated = GatedSAE(GatedSAEConfig(d_in=8, d_sae=16))
    with pytest.raises(ValueError, match="'gated' is not supported"):
        ConceptInterface(gated)


def test_support_merge_stack_and_cache() -> None:
    sae = make_sae(16, 128)
    ci = ConceptInterface(sae, tau=0.5)
    x = torch.randn(2, 8, 16) * 2
    prefix = torch.zeros(2, 8, dtype=torch.bool)
    prefix[:, :5] = True
    full = ci.encode(x)
    merged = ConceptSupport.merge(ci.encode(x, prefix), ci.encode(x, ~prefix))
    for name in ("batch_idx", "token_idx", "atom_idx", "values"):
        torch.testing.assert_close(getattr(merged, name), getattr(full, name))
    with pytest.raises(ValueError, match="overlap"):
        ConceptSupport.merge(ci.encode(x, prefix), full)

    cache = SupportCache(max_items=1)
    calls = []

    def compute(b: int) -> ConceptSupport:
        calls.append(b)
        return ci.encode(x[b : b + 1], prefix[b : b + 1])

    per_sample = [cache.get_or_compute(("p", b), lambda b=b: compute(b)) for b in (0, 0)]
    assert calls == [0] and cache.hits == 1
    stacked = ConceptSupport.stack([per_sample[0], ci.encode(x[1:2], prefix[1:2])])
    want = ci.encode(x, prefix)
    torch.testing.assert_close(stacked.batch_idx, want.batch_idx)
    torch.testing.assert_close(stacked.values, want.values)
