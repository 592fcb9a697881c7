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
    shard_tokens: int = 4096,
    backbone: str = "synthetic",
    family: str = "synthetic",
    hook_layer: int = 1,
    data: dict | None = None,
) -> ActivationStore:
    """Write in-memory activations ([N, d_in]) as a finished store — for generated data and tests.

    Rows with the same `doc_ids` value (default: blocks of 64 rows) form one document; `token_types`
    defaults to INSTRUCTION for every row.
    """
    n, d_in = activations.shape
    token_types = token_types if token_types is not None else torch.full((n,), int(TokenType.INSTRUCTION))
    doc_ids = doc_ids if doc_ids is not None else torch.arange(n) // 64
    meta = StoreMetadata(
        backbone=backbone, family=family, hook_layer=hook_layer, d_in=d_in, dtype=dtype, data=data or {}
    )
    writer = StoreWriter(path, meta, shard_tokens=shard_tokens)
    for doc in torch.unique(doc_ids).tolist():
        rows = (doc_ids == doc).nonzero().squeeze(1)
        writer.add(
            CapturedDocument(
                doc_id=int(doc),
                source_id=f"doc-{doc}",
                text="",
                activations=activations[rows],
                token_ids=torch.zeros(len(rows), dtype=torch.int32),
                token_types=token_types[rows],
                image_rc=torch.full((len(rows), 2), -1, dtype=torch.int16),
                geometry=None,
            )
        )
    writer.close()
    finalize_store(path, meta)
    return ActivationStore.open(path)
