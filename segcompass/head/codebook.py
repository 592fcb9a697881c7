"""Query codebook C ∈ R^{d_sae × d_c}, bias-free, applied as a sparse lookup over the support.

For a token t with support {(j, h_j)}: z_t = Σ_j h_j · C[j] — exactly row t of the reference's dense
`Linear(d_sae → d_c, bias=False)(H)` with weight Cᵀ, at O(nnz · d_c) instead of O(T · d_sae · d_c).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .support import ConceptSupport, TokenBags


class QueryCodebook(nn.Module):
    """Sparse query codebook.

    Args:
        d_sae: number of SAE atoms (rows).
        d_c: concept width.
        sparse_grad: return a sparse (row-indexed) gradient for the weight, so the backward touches only
            the used rows; AdamW needs it densified (see `param_groups.build_optimizer`).
    """

    def __init__(self, d_sae: int, d_c: int, sparse_grad: bool = True):
        super().__init__()
        self.d_sae, self.d_c, self.sparse_grad = d_sae, d_c, sparse_grad
        self.weight = nn.Parameter(torch.empty(d_sae, d_c))  # C: [d_sae, d_c]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise C as nn.Linear(d_sae → d_c) would initialise its (transposed) weight."""
        bound = 1.0 / math.sqrt(self.d_sae)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, support: ConceptSupport, bags: TokenBags | None = None) -> Tensor:
        """Concept vector of every bag (source token) of the support.

        Returns:
            [n_bags, d_c], row i for bag i of `support.bags()`.
        """
        if support.num_entries and int(support.atom_idx.max()) >= self.d_sae:
            raise ValueError(
                f"support atom index {int(support.atom_idx.max())} ≥ codebook d_sae {self.d_sae}"
            )
        bags = support.bags() if bags is None else bags
        return F.embedding_bag(
            support.atom_idx,
            self.weight,
            bags.offsets,
            mode="sum",
            sparse=self.sparse_grad,
            per_sample_weights=support.values.to(self.weight.dtype),
        )  # [n_bags, d_c]

    def dense_reference(self, dense_acts: Tensor) -> Tensor:
        """The reference formulation: bias-free Linear over dense activations [..., d_sae] → [..., d_c]."""
        return F.linear(dense_acts, self.weight.t())


def densify_sparse_grad(param: nn.Parameter) -> None:
    """Replace a sparse `.grad` by its dense equivalent in place (for optimizers without sparse support)."""
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()


__all__ = ["QueryCodebook", "densify_sparse_grad"]
