"""The sparse codebook lookup equals the reference's dense bias-free Linear (forward and gradients)."""

from __future__ import annotations

import pytest
import torch

from segcompass.head import ConceptSupport, QueryCodebook


def _random_support(batch: int, seq: int, d_sae: int, per_token: int, seed: int = 0) -> ConceptSupport:
    g = torch.Generator().manual_seed(seed)
    b, t, a = [], [], []
    for i in range(batch):
        for j in range(seq):
            if (i + j) % 4 == 3:  # some tokens have no active atom
                continue
            atoms = torch.randperm(d_sae, generator=g)[:per_token].sort().values
            b.append(torch.full((per_token,), i))
            t.append(torch.full((per_token,), j))
            a.append(atoms)
    values = (torch.rand(len(b) * per_token, generator=g) * 3 + 2).requires_grad_(True)
    return ConceptSupport(torch.cat(b), torch.cat(t), torch.cat(a), values, batch)


@pytest.mark.parametrize("sparse_grad", [True, False])
def test_sparse_codebook_equals_dense_linear_at_d_sae_65536(sparse_grad: bool) -> None:
    d_sae, d_c, batch, seq = 65536, 16, 2, 6
    torch.manual_seed(0)
    sparse_cb = QueryCodebook(d_sae, d_c, sparse_grad=sparse_grad)
    dense_cb = QueryCodebook(d_sae, d_c, sparse_grad=False)
    dense_cb.load_state_dict(sparse_cb.state_dict())
    support = _random_support(batch, seq, d_sae, per_token=40)
    probe = torch.randn(batch, seq, d_c)

    # sparse path: one vector per (sample, token) bag, scattered back to [B, T, d_c]
    bags = support.bags()
    z = sparse_cb(support, bags)  # [n_bags, d_c]
    z_full = torch.zeros(batch, seq, d_c).index_put((bags.batch, bags.token), z)
    (z_full * probe).sum().backward()
    grad_values_sparse = support.values.grad.clone()
    support.values.grad = None

    # reference: dense activations [B, T, d_sae] → Linear(d_sae → d_c, bias=False)
    dense = support.to_dense(seq, d_sae)
    ref = dense_cb.dense_reference(dense)  # [B, T, d_c]
    (ref * probe).sum().backward()

    torch.testing.assert_close(z_full, ref, rtol=1e-5, atol=1e-5)
    grad_c = sparse_cb.weight.grad
    assert grad_c.is_sparse == sparse_grad
    torch.testing.assert_close(
        grad_c.to_dense() if sparse_grad else grad_c, dense_cb.weight.grad, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(grad_values_sparse, support.values.grad, rtol=1e-5, atol=1e-6)


def test_codebook_rejects_atoms_outside_the_dictionary() -> None:
    cb = QueryCodebook(8, 4)
    s = ConceptSupport(torch.tensor([0]), torch.tensor([0]), torch.tensor([8]), torch.tensor([1.0]), 1)
    with pytest.raises(ValueError, match="d_sae 8"):
        cb(s)


def test_bags_group_entries_by_sample_and_token() -> None:
    s = ConceptSupport(
        torch.tensor([0, 0, 0, 1, 1]),
        torch.tensor([2, 2, 5, 0, 3]),
        torch.tensor([1, 4, 0, 2, 2]),
        torch.ones(5),
        3,
    )
    bags = s.bags()
    assert bags.batch.tolist() == [0, 0, 1, 1]
    assert bags.token.tolist() == [2, 5, 0, 3]
    assert bags.offsets.tolist() == [0, 2, 3, 4]
    assert bags.entry_bag.tolist() == [0, 0, 1, 2, 3]
    assert bags.slot_in_sample.tolist() == [0, 1, 0, 1]
    assert bags.counts_per_sample.tolist() == [2, 2, 0]
