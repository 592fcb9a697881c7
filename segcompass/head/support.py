"""The sparse concept support and its cache for frozen-prefix tokens.

A support is a list of entries (sample b, token t, atom j, value h) sorted by (b, t, j). Its "bags" are
the distinct (b, t) pairs: one concept token per source token, as the dense reference's rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TokenBags:
    """Grouping of support entries by source token (one bag = one concept token)."""

    batch: Tensor
    """[n_bags] sample index of each bag."""
    token: Tensor
    """[n_bags] token position of each bag."""
    offsets: Tensor
    """[n_bags] index of each bag's first entry (embedding_bag offsets)."""
    entry_bag: Tensor
    """[E] bag index of every entry."""
    slot_in_sample: Tensor
    """[n_bags] position of the bag among its sample's bags (column in the padded concept sequence)."""
    counts_per_sample: Tensor
    """[B] bags per sample."""


@dataclass
class ConceptSupport:
    """Sparse SAE support of a batch; entries sorted by (sample, token, atom)."""

    batch_idx: Tensor
    """[E] long: sample of each entry."""
    token_idx: Tensor
    """[E] long: token position (in the hook_states sequence) of each entry."""
    atom_idx: Tensor
    """[E] long: SAE atom of each entry."""
    values: Tensor
    """[E] float: activation h of each entry (carries gradients to the hook states when they need them)."""
    batch_size: int
    """B: number of samples (some may have no entries)."""

    def __post_init__(self) -> None:
        n = self.batch_idx.shape[0]
        for name in ("token_idx", "atom_idx", "values"):
            if getattr(self, name).shape != (n,):
                raise ValueError(
                    f"ConceptSupport.{name} has shape {tuple(getattr(self, name).shape)}, expected ({n},)"
                )

    @property
    def num_entries(self) -> int:
        """E: number of (token, atom) entries."""
        return int(self.batch_idx.shape[0])

    def _key(self, max_token: int | None = None) -> Tensor:
        span = (int(self.token_idx.max()) + 1 if self.num_entries else 1) if max_token is None else max_token
        return self.batch_idx * span + self.token_idx

    def bags(self) -> TokenBags:
        """Group the entries by (sample, token)."""
        dev = self.batch_idx.device
        if self.num_entries == 0:
            e = torch.empty(0, dtype=torch.long, device=dev)
            return TokenBags(e, e, e, e, e, torch.zeros(self.batch_size, dtype=torch.long, device=dev))
        key = self._key()
        uniq, entry_bag, counts = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
        offsets = torch.cumsum(counts, 0) - counts
        batch = self.batch_idx[offsets]
        token = self.token_idx[offsets]
        per_sample = torch.bincount(batch, minlength=self.batch_size)
        first_of_sample = torch.cumsum(per_sample, 0) - per_sample
        slot_in_sample = torch.arange(uniq.shape[0], device=dev) - first_of_sample[batch]
        return TokenBags(batch, token, offsets, entry_bag, slot_in_sample, per_sample)

    def detach(self) -> ConceptSupport:
        """The same support with values cut from the graph."""
        return ConceptSupport(
            self.batch_idx, self.token_idx, self.atom_idx, self.values.detach(), self.batch_size
        )

    def to(self, device: torch.device | str) -> ConceptSupport:
        """Move every tensor to `device`."""
        return ConceptSupport(
            self.batch_idx.to(device),
            self.token_idx.to(device),
            self.atom_idx.to(device),
            self.values.to(device),
            self.batch_size,
        )

    def sample(self, b: int) -> ConceptSupport:
        """Entries of sample `b`, as a one-sample support."""
        m = self.batch_idx == b
        return ConceptSupport(
            torch.zeros_like(self.batch_idx[m]), self.token_idx[m], self.atom_idx[m], self.values[m], 1
        )

    def to_dense(self, seq_len: int, d_sae: int) -> Tensor:
        """Dense [B, seq_len, d_sae] activations (tests and small cases only)."""
        dense = self.values.new_zeros(self.batch_size, seq_len, d_sae)
        return dense.index_put((self.batch_idx, self.token_idx, self.atom_idx), self.values)

    @staticmethod
    def stack(samples: Sequence[ConceptSupport]) -> ConceptSupport:
        """Batch one-sample supports (sample i of the result = samples[i])."""
        if not samples:
            raise ValueError("ConceptSupport.stack needs at least one support")
        for i, s in enumerate(samples):
            if s.batch_size != 1:
                raise ValueError(
                    f"ConceptSupport.stack expects one-sample supports; item {i} has {s.batch_size}"
                )
        batch = torch.cat([torch.full_like(s.batch_idx, i) for i, s in enumerate(samples)])
        return ConceptSupport(
            batch,
            torch.cat([s.token_idx for s in samples]),
            torch.cat([s.atom_idx for s in samples]),
            torch.cat([s.values for s in samples]),
            len(samples),
        )

    @staticmethod
    def merge(a: ConceptSupport, b: ConceptSupport) -> ConceptSupport:
        """Union of two supports over disjoint tokens of the same batch, re-sorted by (sample, token, atom).

        Raises:
            ValueError: if the batch sizes differ or a (sample, token) appears in both.
        """
        if a.batch_size != b.batch_size:
            raise ValueError(f"cannot merge supports of batch sizes {a.batch_size} and {b.batch_size}")
        if a.num_entries == 0:
            return b
        if b.num_entries == 0:
            return a
        span = int(torch.maximum(a.token_idx.max(), b.token_idx.max())) + 1
        ka, kb = torch.unique(a._key(span)), torch.unique(b._key(span))
        if bool(torch.isin(ka, kb).any()):
            raise ValueError(
                "a precomputed (prefix) support and the freshly encoded tokens overlap: select only the "
                "tokens that are not in the prefix with concept_token_mask"
            )
        d_sae = int(torch.maximum(a.atom_idx.max(), b.atom_idx.max())) + 1
        key = torch.cat([a._key(span), b._key(span)]) * d_sae + torch.cat([a.atom_idx, b.atom_idx])
        order = torch.argsort(key)
        return ConceptSupport(
            torch.cat([a.batch_idx, b.batch_idx])[order],
            torch.cat([a.token_idx, b.token_idx])[order],
            torch.cat([a.atom_idx, b.atom_idx])[order],
            torch.cat([a.values, b.values.to(a.values.dtype)])[order],
            a.batch_size,
        )


class SupportCache:
    """LRU cache of one-sample supports keyed by the caller (e.g. a hash of the prefix token ids + image).

    The hook-layer states of the image and prompt tokens depend only on the frozen layers up to the hook,
    so their support is the same in every step and for every rollout of a prompt: compute it once.
    """

    def __init__(self, max_items: int = 4096):
        self.max_items = int(max_items)
        self._items: OrderedDict[Hashable, ConceptSupport] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get_or_compute(self, key: Hashable, compute: Callable[[], ConceptSupport]) -> ConceptSupport:
        """Cached support for `key`, or `compute()` (stored detached) on a miss."""
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        value = compute().detach()
        if value.batch_size != 1:
            raise ValueError(
                f"SupportCache stores one-sample supports; compute() returned {value.batch_size}"
            )
        self._items[key] = value
        if len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value
