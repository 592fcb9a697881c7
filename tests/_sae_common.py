"""Shared helpers of the SAE training/evaluation tests: synthetic sparse-dictionary activations and stores."""

from __future__ import annotations

from pathlib import Path

import torch

from sae.token_types import TokenType


def sparse_dictionary(
    n_tokens: int, d_in: int = 32, n_atoms: int = 64, k: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations [n_tokens, d_in], true unit atoms [n_atoms, d_in]): each token is a sum of `k` distinct
    random atoms with coefficients uniform in [1, 3], plus small isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=g)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    idx = torch.rand(n_tokens, n_atoms, generator=g).argsort(dim=1)[:, :k]
    coef = 1 + 2 * torch.rand(n_tokens, k, generator=g)
    x = torch.einsum("tk,tkd->td", coef, atoms[idx]) + 0.01 * torch.randn(n_tokens, d_in, generator=g)
    return x, atoms


def token_types_for(n_tokens: int) -> torch.Tensor:
    """A repeating pattern of image / instruction / cot types."""
    pattern = torch.tensor(
        [TokenType.IMAGE, TokenType.IMAGE, TokenType.INSTRUCTION, TokenType.COT], dtype=torch.int8
    )
    return pattern.repeat(n_tokens // 4 + 1)[:n_tokens]


def make_store(path: Path, x: torch.Tensor, *, shard_tokens: int = 2048, doc_len: int = 32, **kw):
    """A finished activation store holding `x` (documents of `doc_len` rows)."""
    from sae.store import write_store

    n = x.shape[0]
    return write_store(
        path,
        x,
        token_types_for(n),
        doc_ids=torch.arange(n) // doc_len,
        shard_tokens=shard_tokens,
        **kw,
    )


def store_rows(store) -> dict[str, torch.Tensor]:
    """Every row of a store (`ActivationStore`), ordered by document and position."""
    parts = [store.load_shard(s) for s in store.manifest.shards]
    rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    order = torch.argsort(rows["doc_id"] * 100_000 + rows["position"])
    return {k: v[order] for k, v in rows.items()}


def cli_args(**fields) -> list[str]:
    """Command-line flags for the given config fields (`segcompass-sae train --lr 0.003 ...`)."""
    args = []
    for k, v in fields.items():
        args += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    return args


def max_cosine(decoder: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """For each true atom, the largest cosine similarity with any decoder row."""
    d = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (atoms @ d.T).max(dim=1).values
