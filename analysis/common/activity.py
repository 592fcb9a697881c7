"""Stream a store through an SAE, one document at a time, with bounded memory.

The store is read shard by shard (a document never spans shards); each shard's selected rows are encoded
in chunks of at most `chunk_elements` SAE activations, and only per-token summaries are kept — L0 (atoms
with h > threshold), activation mass (sum of those activations) and the summed activation of a chosen atom
set — never the dense [T, d_sae] matrix. Memory is one shard plus one chunk, whatever the store's size.
Optionally the stream also records which atoms were ever active per token group (for "distinct atoms").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from analysis.common.inputs import AnalysisInputError, LoadedSAE
from sae.image_geometry import ImageGeometry
from sae.store import ActivationStore
from sae.token_types import TokenType

logger = logging.getLogger(__name__)

RANKINGS = ("l0", "mass", "atoms")
"""Ways to score a token's SAE activity: active-atom count, activation mass, a chosen atom set's activation."""


@dataclass(frozen=True)
class DocumentMeta:
    """What the store records about one document."""

    doc_id: int
    source_id: str
    text: str
    geometry: ImageGeometry | None


@dataclass
class DocumentActivity:
    """Per-token SAE activity of one document's selected rows (n rows, in sequence order)."""

    meta: DocumentMeta
    """The document."""
    token_type: np.ndarray
    """int8 [n] `TokenType` values."""
    image_rc: np.ndarray
    """int16 [n, 2] image-grid (row, col), −1 for non-image tokens."""
    l0: np.ndarray
    """int32 [n] number of atoms with activation > threshold."""
    mass: np.ndarray
    """float32 [n] sum of those activations."""
    atom_score: np.ndarray | None
    """float32 [n] summed activation of the chosen atoms, or None when no atoms were chosen."""
    group: np.ndarray | None = None
    """int [n] the labeller's group of each token (−1: none), when a labeller was given."""

    def score(self, ranking: str) -> np.ndarray:
        """The per-token score for `ranking` ("l0", "mass" or "atoms")."""
        if ranking == "l0":
            return self.l0.astype(np.float64)
        if ranking == "mass":
            return self.mass.astype(np.float64)
        if ranking == "atoms":
            if self.atom_score is None:
                raise AnalysisInputError("ranking 'atoms' needs a chosen atom set (atoms=[...])")
            return self.atom_score.astype(np.float64)
        raise AnalysisInputError(f"unknown ranking {ranking!r}; choose from {RANKINGS}")


def shard_documents(store: ActivationStore, file: str) -> dict[int, DocumentMeta]:
    """The documents a shard's header records, by doc id (the shard's checksum is checked first)."""
    record = next((r for r in store.manifest.shards if r.file == file), None)
    if record is None:
        raise AnalysisInputError(f"store {store.root} lists no shard {file}")
    docs = store.shard_documents(record)
    return {
        int(d["doc_id"]): DocumentMeta(
            int(d["doc_id"]),
            str(d["source_id"]),
            d.get("text", ""),
            ImageGeometry.from_dict(d["geometry"]) if d.get("geometry") else None,
        )
        for d in docs
    }


Labeller = Callable[[DocumentMeta, np.ndarray, np.ndarray], np.ndarray]
"""(document, token types [n], image_rc [n, 2]) → group index per token (−1 = no group)."""


class ActivityStream:
    """Iterate `DocumentActivity` over a store; after iteration `used_atoms[g]` marks atoms seen in group g.

    Args:
        threshold: an atom is active on a token when its activation is > threshold.
        atoms: atom indices whose summed activation is `atom_score` (the "atoms" ranking).
        token_types: keep only these token types (None: all).
        max_documents: stop after this many documents with selected rows.
        labeller, num_groups: per-token groups whose active atoms are accumulated in `used_atoms`.
        chunk_elements: most SAE activations (rows × d_sae) materialised at once.
    """

    def __init__(
        self,
        store: ActivationStore,
        sae: LoadedSAE,
        *,
        threshold: float = 0.0,
        atoms: Sequence[int] | None = None,
        token_types: Sequence[str | int | TokenType] | None = None,
        max_documents: int | None = None,
        labeller: Labeller | None = None,
        num_groups: int = 0,
        chunk_elements: int = 1 << 24,
        progress: bool = True,
        desc: str = "SAE encode",
    ) -> None:
        self.store, self.sae, self.threshold = store, sae, float(threshold)
        self.atoms = torch.as_tensor(list(atoms), dtype=torch.long) if atoms else None
        if self.atoms is not None and (self.atoms.min() < 0 or self.atoms.max() >= sae.d_sae):
            raise AnalysisInputError(f"atom indices must lie in [0, {sae.d_sae}); got {list(atoms or [])}")
        self.keep_types = (
            torch.tensor(sorted({int(TokenType.parse(t)) for t in token_types}), dtype=torch.int8)
            if token_types is not None
            else None
        )
        if token_types is not None and store.num_tokens(token_types) == 0:
            raise AnalysisInputError(
                f"store {store.root} has no tokens of types {list(token_types)} "
                f"(it has {store.manifest.token_type_counts})"
            )
        if max_documents is not None and max_documents <= 0:
            raise AnalysisInputError(f"max_documents must be positive, got {max_documents}")
        self.max_documents = max_documents
        self.labeller, self.num_groups = labeller, num_groups
        self.chunk_rows = max(1, chunk_elements // sae.d_sae)
        self.used_atoms = torch.zeros(num_groups, sae.d_sae, dtype=torch.bool)
        self.progress, self.desc = progress, desc
        self.tokens_encoded = 0
        self.documents_seen = 0

    @torch.no_grad()
    def _encode(self, x: torch.Tensor, groups: np.ndarray | None) -> dict[str, np.ndarray]:
        """Per-token summaries of SAE(x) in chunks of `chunk_rows`."""
        sae = self.sae.sae
        device = getattr(sae, "device", "cpu")
        out: dict[str, list[np.ndarray]] = {"l0": [], "mass": [], "atom": []}
        for i in range(0, x.shape[0], self.chunk_rows):
            h = sae.encode(x[i : i + self.chunk_rows].to(device)).float().cpu()
            if self.atoms is not None:
                out["atom"].append(h[:, self.atoms].sum(1).numpy())
            active = h > self.threshold
            out["l0"].append(active.sum(1, dtype=torch.int32).numpy())
            if self.threshold == 0 and bool(h.min() >= 0):  # ReLU-family codes: inactive entries are 0
                out["mass"].append(h.sum(1).numpy())
            else:
                out["mass"].append(h.mul_(active).sum(1).numpy())  # in place: no second [rows, d_sae] float
            if groups is not None:
                g = groups[i : i + self.chunk_rows]
                for label in np.unique(g[g >= 0]):
                    sel = torch.from_numpy(g == label)
                    self.used_atoms[int(label)] |= active[sel].any(0)
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}

    def __iter__(self) -> Iterator[DocumentActivity]:
        total = (
            self.store.num_tokens()
            if self.keep_types is None
            else self.store.num_tokens([int(t) for t in self.keep_types])
        )
        bar = tqdm(total=total, desc=self.desc, unit="tok", disable=not self.progress)
        try:
            for record in self.store.manifest.shards:
                if self.max_documents is not None and self.documents_seen >= self.max_documents:
                    break
                before = self.tokens_encoded
                yield from self._shard(record)
                bar.update(self.tokens_encoded - before)
        finally:
            bar.close()

    def _shard(self, record: Any) -> Iterator[DocumentActivity]:
        metas = shard_documents(self.store, record.file)
        rows = self.store.load_shard(record)
        keep = torch.ones(record.num_tokens, dtype=torch.bool)
        if self.keep_types is not None:
            keep &= torch.isin(rows["token_type"], self.keep_types)
        doc_id = rows["doc_id"][keep].numpy()
        if doc_id.size == 0:
            return
        starts = np.concatenate([[0], np.flatnonzero(np.diff(doc_id)) + 1])
        ends = np.concatenate([starts[1:], [doc_id.size]])
        if self.max_documents is not None:
            room = self.max_documents - self.documents_seen
            starts, ends = starts[:room], ends[:room]
        n = int(ends[-1])
        tt = rows["token_type"][keep][:n].numpy()
        rc = rows["image_rc"][keep][:n].numpy()
        groups = None
        if self.labeller is not None:
            groups = np.concatenate(
                [
                    self.labeller(metas[int(doc_id[s])], tt[s:e], rc[s:e])
                    for s, e in zip(starts, ends, strict=True)
                ]
            )
        x = rows["activations"][keep][:n].float()
        if not torch.isfinite(x).all():
            raise AnalysisInputError(f"shard {record.file} holds NaN or Inf activations")
        del rows
        enc = self._encode(x, groups)
        self.tokens_encoded += n
        for s, e in zip(starts, ends, strict=True):
            self.documents_seen += 1
            yield DocumentActivity(
                meta=metas[int(doc_id[s])],
                token_type=tt[s:e],
                image_rc=rc[s:e],
                l0=enc["l0"][s:e],
                mass=enc["mass"][s:e],
                atom_score=enc["atom"][s:e] if self.atoms is not None else None,
                group=groups[s:e] if groups is not None else None,
            )
