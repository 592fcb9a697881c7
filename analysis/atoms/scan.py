"""First pass of atom naming: per-atom firing statistics, activation histograms and top-k rows of a store.

Atoms are processed in chunks (`atom_chunk` atoms encoded per block of rows, at most `chunk_elements`
codes per block) and passes (`atoms_per_pass` atoms share one read of the store). Memory per pass is
O(atoms_per_pass × (top_k + histogram bins)) plus one shard and one block — never [T, d_sae].
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from analysis.atoms.stream import AtomEncoder, TopKReservoir, iter_shard_rows
from analysis.common.inputs import AnalysisInputError
from sae.store import ActivationStore
from sae.token_types import TokenType

logger = logging.getLogger(__name__)


@dataclass
class AtomScan:
    """What one streaming pass records per atom (A atoms, k examples, B histogram bins)."""

    atoms: np.ndarray
    """int64 [A] atom indices, in the order of every other array."""
    tokens: int
    """Rows scanned (selected token types, chosen split)."""
    active: np.ndarray
    """int64 [A] rows where the atom's code is above the threshold."""
    active_sum: np.ndarray
    """float64 [A] summed code over those rows."""
    hist: np.ndarray
    """int64 [A, B + 2] counts of active codes per bin of `hist_edges` (first: below, last: above)."""
    hist_edges: np.ndarray
    """float64 [B + 1] log-spaced bin edges shared by all atoms."""
    top_values: np.ndarray
    """float32 [A, k] largest codes, descending (−inf where fewer than k rows)."""
    top_ids: np.ndarray
    """int64 [A, k] their `pack_row` ids (ties: earlier row first; −1 where none)."""

    @property
    def frequency(self) -> np.ndarray:
        """float64 [A] share of scanned rows where the atom fires."""
        return self.active / max(self.tokens, 1)

    @property
    def mean_active(self) -> np.ndarray:
        """float64 [A] mean code over the rows where it fires (NaN if never)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.active > 0, self.active_sum / np.maximum(self.active, 1), np.nan)


def atom_chunks(atoms: np.ndarray, atom_chunk: int, atoms_per_pass: int | None) -> list[list[torch.Tensor]]:
    """Passes, each a list of atom-index chunks."""
    if atom_chunk < 1 or (atoms_per_pass is not None and atoms_per_pass < 1):
        raise AnalysisInputError(
            f"atom_chunk and atoms_per_pass must be positive ({atom_chunk}, {atoms_per_pass})"
        )
    per_pass = len(atoms) if atoms_per_pass is None else atoms_per_pass
    chunk = min(atom_chunk, max(per_pass, 1))
    passes = []
    for p in range(0, len(atoms), max(per_pass, 1)):
        block = torch.as_tensor(atoms[p : p + per_pass], dtype=torch.int64)
        passes.append([block[c : c + chunk] for c in range(0, len(block), chunk)])
    return passes


def scan_atoms(
    store: ActivationStore,
    encoder: AtomEncoder,
    atoms: np.ndarray,
    *,
    top_k: int,
    threshold: float,
    token_types: Sequence[str | int | TokenType] | None,
    split: str,
    val_fraction: float,
    atom_chunk: int,
    atoms_per_pass: int | None,
    chunk_elements: int,
    hist_edges: np.ndarray,
    progress: bool = True,
    desc: str = "atom scan",
) -> AtomScan:
    """One or more streaming passes over the store; see the module docstring."""
    edges = torch.as_tensor(hist_edges, dtype=torch.float32)
    n_bins = len(hist_edges) + 1
    parts: list[AtomScan] = []
    passes = atom_chunks(atoms, atom_chunk, atoms_per_pass)
    if len(passes) > 1 and encoder.full_width_only:
        logger.warning(
            "this SAE encodes at full width: %d passes cost %d full encodes", len(passes), len(passes)
        )
    for p, chunks in enumerate(passes):
        reservoirs = [TopKReservoir(len(c), top_k) for c in chunks]
        active = [torch.zeros(len(c), dtype=torch.int64) for c in chunks]
        sums = [torch.zeros(len(c), dtype=torch.float64) for c in chunks]
        hists = [torch.zeros(len(c) * n_bins, dtype=torch.int64) for c in chunks]
        tokens = 0
        label = desc if len(passes) == 1 else f"{desc} {p + 1}/{len(passes)}"
        rows_iter = iter_shard_rows(
            store,
            token_types=token_types,
            split=split,
            val_fraction=val_fraction,
            progress=progress,
            desc=label,
        )
        for rows in rows_iter:
            tokens += rows.row_id.numel()
            for i, chunk in enumerate(chunks):
                step = max(1, chunk_elements // len(chunk))
                for s in range(0, rows.row_id.numel(), step):
                    h = encoder(rows.activations[s : s + step], chunk)
                    reservoirs[i].update(h, rows.row_id[s : s + step])
                    on = h > threshold
                    active[i] += on.sum(0)
                    sums[i] += torch.where(on, h, 0).sum(0, dtype=torch.float64)
                    atom_idx = on.nonzero()[:, 1]
                    bins = torch.bucketize(h[on], edges, right=True)
                    hists[i] += torch.bincount(atom_idx * n_bins + bins, minlength=len(chunk) * n_bins)
        parts.extend(
            AtomScan(
                atoms=c.numpy(),
                tokens=tokens,
                active=active[i].numpy(),
                active_sum=sums[i].numpy(),
                hist=hists[i].view(len(c), n_bins).numpy(),
                hist_edges=np.asarray(hist_edges, dtype=np.float64),
                top_values=reservoirs[i].values.numpy(),
                top_ids=reservoirs[i].ids.numpy(),
            )
            for i, c in enumerate(chunks)
        )
    if not parts:
        raise AnalysisInputError("no atoms selected")
    if parts[0].tokens == 0:
        raise AnalysisInputError(
            f"store {store.root}: no rows selected (token types {list(token_types) if token_types else 'all'}, "
            f"split {split!r} with val_fraction {val_fraction})"
        )
    return AtomScan(
        atoms=np.concatenate([p.atoms for p in parts]),
        tokens=parts[0].tokens,
        active=np.concatenate([p.active for p in parts]),
        active_sum=np.concatenate([p.active_sum for p in parts]),
        hist=np.concatenate([p.hist for p in parts]),
        hist_edges=parts[0].hist_edges,
        top_values=np.concatenate([p.top_values for p in parts]),
        top_ids=np.concatenate([p.top_ids for p in parts]),
    )
