"""The activation store: sharded, checksummed, resumable on-disk activations (docs/activation_store.md)."""

from __future__ import annotations

import os

import torch

from sae.token_types import TokenType

from .format import StoreError, StoreMetadata
from .reader import ActivationBatch, ActivationStore, Manifest
from .writer import CapturedDocument, StoreWriter, finalize_store

__all__ = [
    "ActivationBatch",
    "ActivationStore",
    "CapturedDocument",
    "Manifest",
    "StoreError",
    "StoreMetadata",
    "StoreWriter",
    "finalize_store",
    "write_store",
]


def write_store(
    path: str | os.PathLike,
    activations: torch.Tensor,
    token_types: torch.Tensor | None = None,
    *,
    doc_ids: torch.Tensor | None = None,
    dtype: str = "float32",
    shard_tokens: int | None = None,
    backbone: str = "synthetic",
    family: str = "synthetic",
    hook_layer: int = 1,
    data: dict | None = None,
) -> ActivationStore:
    """Write in-memory activations ([N, d_in]) as a finished store — for generated data and tests.

    Rows with the same `doc_ids` value (default: blocks of 64 rows) form one document, in ascending id order
    (a document's rows keep their order); `token_types` defaults to INSTRUCTION for every row.
    `shard_tokens` defaults to `StoreWriter`'s (65536). Time is linear in N: the rows are grouped by one
    stable sort, not by a scan of all rows per document.
    """
    n, d_in = activations.shape
    token_types = token_types if token_types is not None else torch.full((n,), int(TokenType.INSTRUCTION))
    doc_ids = torch.as_tensor(doc_ids) if doc_ids is not None else torch.arange(n) // 64
    if doc_ids.shape != (n,) or token_types.shape[0] != n:
        raise ValueError(
            f"doc_ids {tuple(doc_ids.shape)} and token_types {tuple(token_types.shape)} must have one entry per "
            f"row of activations ({n})"
        )
    meta = StoreMetadata(
        backbone=backbone, family=family, hook_layer=hook_layer, d_in=d_in, dtype=dtype, data=data or {}
    )
    sizing = {} if shard_tokens is None else {"shard_tokens": shard_tokens}
    writer = StoreWriter(path, meta, **sizing)
    if n and bool((doc_ids[1:] < doc_ids[:-1]).any()):  # group the rows of each document: one stable sort
        order = torch.argsort(doc_ids, stable=True)
        doc_ids, activations, token_types = doc_ids[order], activations[order], token_types[order]
    docs, counts = torch.unique_consecutive(doc_ids, return_counts=True)
    sizes = counts.tolist()
    for doc, acts, types in zip(
        docs.tolist(), activations.split(sizes), token_types.split(sizes), strict=True
    ):
        writer.add(
            CapturedDocument(
                doc_id=int(doc),
                source_id=f"doc-{doc}",
                text="",
                activations=acts,
                token_ids=torch.zeros(len(acts), dtype=torch.int32),
                token_types=types,
                image_rc=torch.full((len(acts), 2), -1, dtype=torch.int16),
                geometry=None,
            )
        )
    writer.close()
    finalize_store(path, meta)
    return ActivationStore.open(path)
