"""Streaming pieces of atom naming: selected store rows by split, SAE codes of an atom slice, a top-k reservoir.

A store is read shard by shard (a document never spans shards). Each shard's rows are filtered by token
type and by the store's document-level split (`sae.store.reader`'s hash of the doc id, the split SAE
training holds out), then encoded a block at a time: `AtomEncoder` returns the codes of a slice of atoms
only, so memory holds at most `rows × atoms` values per block, never [T, d_sae]. A row is identified by
`pack_row(shard index, row in shard)`, which orders rows as the stream sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from analysis.common.activity import DocumentMeta, shard_documents
from analysis.common.inputs import AnalysisInputError, LoadedSAE
from sae.store import ActivationStore
from sae.store.reader import _is_val  # the store's own document-level hold-out (same hash as SAE training)
from sae.token_types import TokenType

logger = logging.getLogger(__name__)

SPLITS = ("all", "train", "val")
_ROW_BITS = 32


def pack_row(shard_index: int | torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """int64 id of (shard, row): increasing in stream order."""
    return (torch.as_tensor(shard_index, dtype=torch.int64) << _ROW_BITS) | row.to(torch.int64)


def unpack_row(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard index, row in shard) of packed ids."""
    packed = np.asarray(packed, dtype=np.int64)
    return packed >> _ROW_BITS, packed & ((1 << _ROW_BITS) - 1)


@dataclass
class ShardRows:
    """The selected rows of one shard (n rows, in shard order)."""

    shard_index: int
    """Index of the shard in the store's manifest."""
    row_id: torch.Tensor
    """int64 [n] `pack_row` ids."""
    activations: torch.Tensor
    """float32 [n, d_in]."""
    doc_id: torch.Tensor
    """int64 [n]."""
    position: torch.Tensor
    """int32 [n] index in the document's sequence."""
    token_id: torch.Tensor
    """int32 [n]."""
    token_type: torch.Tensor
    """int8 [n] `TokenType` values."""
    image_rc: torch.Tensor
    """int16 [n, 2] image-grid (row, col), −1 for non-image tokens."""
    documents: dict[int, DocumentMeta]
    """Every document of the shard (selected or not)."""
    shard_doc_id: torch.Tensor
    """int64 [N] doc id of every row of the shard (selected or not), for context windows."""
    shard_position: torch.Tensor
    """int32 [N] position of every row of the shard."""
    shard_token_id: torch.Tensor
    """int32 [N] token id of every row of the shard."""


def type_filter(token_types: Sequence[str | int | TokenType] | None) -> torch.Tensor | None:
    """int8 tensor of kept `TokenType` values, or None for all."""
    if token_types is None:
        return None
    return torch.tensor(sorted({int(TokenType.parse(t)) for t in token_types}), dtype=torch.int8)


def iter_shard_rows(
    store: ActivationStore,
    *,
    token_types: Sequence[str | int | TokenType] | None,
    split: str,
    val_fraction: float,
    progress: bool = True,
    desc: str = "atoms",
) -> Iterator[ShardRows]:
    """Selected rows shard by shard (shards without selected rows are skipped)."""
    if split not in SPLITS:
        raise AnalysisInputError(f"split must be one of {SPLITS}, got {split!r}")
    keep_types = type_filter(token_types)
    total = store.num_tokens(token_types) if token_types is not None else store.num_tokens()
    bar = tqdm(total=total, desc=desc, unit="tok", disable=not progress, leave=False)
    try:
        for index, record in enumerate(store.manifest.shards):
            rows = store.load_shard(record)
            keep = torch.ones(record.num_tokens, dtype=torch.bool)
            if keep_types is not None:
                keep &= torch.isin(rows["token_type"], keep_types)
            bar.update(int(keep.sum()))
            if split != "all":
                val = _is_val(rows["doc_id"], val_fraction)
                keep &= val if split == "val" else ~val
            idx = keep.nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            x = rows["activations"][idx].float()
            if not torch.isfinite(x).all():
                raise AnalysisInputError(f"shard {record.file} holds NaN or Inf activations")
            yield ShardRows(
                shard_index=index,
                row_id=pack_row(index, idx),
                activations=x,
                doc_id=rows["doc_id"][idx],
                position=rows["position"][idx],
                token_id=rows["token_id"][idx],
                token_type=rows["token_type"][idx],
                image_rc=rows["image_rc"][idx],
                documents=shard_documents(store, record.file),
                shard_doc_id=rows["doc_id"],
                shard_position=rows["position"],
                shard_token_id=rows["token_id"],
            )
    finally:
        bar.close()


class AtomEncoder:
    """SAE codes of a slice of atoms, float32 on the CPU.

    Standard and JumpReLU SAEs (elementwise activation) are encoded on the slice's encoder columns only, so a
    slice costs its share of a full encode; other architectures (e.g. TopK, whose activation couples atoms)
    are encoded at full width and sliced. The slice path is checked against a full encode on its first call.
    """

    def __init__(self, loaded: LoadedSAE) -> None:
        self.sae = loaded.sae
        self.d_sae = loaded.d_sae
        self.device = getattr(self.sae, "device", "cpu")
        self._sliced = self._supports_slices()
        self._checked = False

    def _supports_slices(self) -> bool:
        try:
            from sae_lens import JumpReLUSAE, StandardSAE
        except ImportError:  # pragma: no cover - sae-lens is a dependency
            return False
        kinds = {StandardSAE: StandardSAE.encode, JumpReLUSAE: JumpReLUSAE.encode}
        return any(isinstance(self.sae, k) and type(self.sae).encode is enc for k, enc in kinds.items())

    @property
    def full_width_only(self) -> bool:
        """Whether every slice costs a full-width encode."""
        return not self._sliced

    def _slice(self, x: torch.Tensor, sel: slice | torch.Tensor) -> torch.Tensor:
        sae: Any = self.sae
        sae_in = sae.process_sae_in(x)
        pre = sae.hook_sae_acts_pre(sae_in @ sae.W_enc[:, sel] + sae.b_enc[sel])
        acts = sae.activation_fn(pre)
        if hasattr(sae, "threshold"):  # JumpReLU
            acts = acts * (pre > sae.threshold[sel]).to(acts.dtype)
        return acts

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """float32 [n, len(atoms)] codes of the given atoms (int64 indices)."""
        x = x.to(self.device)
        sel = as_selector(atoms, self.device)
        if self._sliced and not self._checked:
            self._checked = True
            probe = x[:8]
            full = self.sae.encode(probe)[:, sel].float()
            if not torch.allclose(self._slice(probe, sel).float(), full, atol=1e-5, rtol=1e-4):
                logger.warning(
                    "%s: sliced encode differs from encode(); using full-width encodes",
                    type(self.sae).__name__,
                )
                self._sliced = False
        h = self._slice(x, sel) if self._sliced else self.sae.encode(x)[:, sel]
        return h.float().cpu()


def as_selector(atoms: torch.Tensor, device: Any = "cpu") -> slice | torch.Tensor:
    """A slice for a contiguous increasing run of atom indices (no copy of the weights), else the indices."""
    first, n = int(atoms[0]), atoms.numel()
    if bool((atoms == torch.arange(first, first + n)).all()):
        return slice(first, first + n)
    return atoms.to(device)


class TopKReservoir:
    """Exact per-atom top-k of a stream of [rows, atoms] blocks: order by value (descending), then row id.

    Memory is O(atoms × k) whatever the stream's length; the result equals a stable descending sort of the
    dense [T, atoms] matrix when blocks arrive in increasing row-id order (ties go to the earlier row).
    """

    def __init__(self, n_atoms: int, k: int) -> None:
        if k < 1:
            raise AnalysisInputError(f"top_k must be at least 1, got {k}")
        self.k = k
        self.values = torch.full((n_atoms, k), float("-inf"))
        """float32 [atoms, k] best values (−inf where fewer than k rows were seen)."""
        self.ids = torch.full((n_atoms, k), -1, dtype=torch.int64)
        """int64 [atoms, k] their row ids (−1 where none)."""

    def update(self, h: torch.Tensor, row_id: torch.Tensor) -> None:
        """Merge a block: h float [rows, atoms], row_id int64 [rows] ascending and above every earlier id."""
        n_rows, n_atoms = h.shape
        if n_rows == 0:
            return
        kk = min(self.k, n_rows)
        ht = h.T
        kth = torch.topk(ht, kk, dim=1).values[:, -1:]
        greater = ht > kth
        need = kk - greater.sum(1, keepdim=True, dtype=torch.int32)
        eq = ht == kth
        take = greater | (eq & (eq.cumsum(1, dtype=torch.int32) <= need))  # the earliest rows among ties
        atom_idx, row_idx = take.nonzero(as_tuple=True)  # sorted by atom, then row: kk per atom
        new_values = ht[atom_idx, row_idx].view(n_atoms, kk)
        new_ids = row_id[row_idx].view(n_atoms, kk)
        values = torch.cat([self.values, new_values], 1)
        ids = torch.cat([self.ids, new_ids], 1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.values = values.gather(1, order)
        self.ids = ids.gather(1, order)
