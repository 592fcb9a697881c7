"""Training batches from an activation store for sae-lens's trainer: shuffled, filtered, resumable, sliced.

`TrainBatchProvider` is the `DataProvider` (an iterator of [B, d_in] tensors) that sae-lens's `SAETrainer`
consumes. It reads the store's training split (a deterministic document-level hold-out, DESIGN §4: 5 %),
optionally only some token types, as `data_slices` independent streams over disjoint shard slices; rank r
of W reads slices r, r+W, ... and each step concatenates B/S rows from each of its slices. Each stream
reshuffles per epoch with a seed derived from (seed, epoch), and drops the last partial batch of an epoch,
so every batch has exactly the same size. Its position — (epoch, batches read) per slice — is all a
checkpoint needs to resume the stream exactly (the store skips `start_batch` batches).

Any object with the reader's interface can stand in for `sae.store.ActivationStore` (`BatchSource`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

logger = logging.getLogger(__name__)

_GOLDEN = 0x9E3779B97F4A7C15


class BatchSource(Protocol):
    """What the provider needs from a store (`sae.store.ActivationStore` satisfies it)."""

    @property
    def d_in(self) -> int: ...

    def num_tokens(self, token_types: Sequence[str] | None = None) -> int: ...

    def shard_slice(self, rank: int, world_size: int) -> BatchSource: ...

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        token_types: Sequence[str] | None = None,
        split: str = "all",
        val_fraction: float = 0.05,
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> Iterator[Any]: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: distinct per epoch, deterministic."""
    return (seed * 1_000_003 + epoch * _GOLDEN) % (1 << 63)


@dataclass
class StreamPosition:
    """Where one slice's stream stands: the epoch and the batches already read in it."""

    epoch: int = 0
    batch: int = 0


class _SliceStream:
    """Fixed-size training batches of one store slice, epoch after epoch."""

    def __init__(
        self, source: BatchSource, index: int, batch_size: int, spec: dict[str, Any], seed: int
    ) -> None:
        self.source, self.index, self.batch_size, self.spec, self.seed = source, index, batch_size, spec, seed
        self.pos = StreamPosition()
        self._it: Iterator[Any] | None = None

    def _open(self) -> Iterator[Any]:
        return iter(
            self.source.batches(
                self.batch_size,
                shuffle=True,
                seed=epoch_seed(self.seed, self.pos.epoch),
                drop_last=True,
                start_batch=self.pos.batch,
                **self.spec,
            )
        )

    def next(self) -> torch.Tensor:
        for _ in range(2):
            if self._it is None:
                self._it = self._open()
            batch = next(self._it, None)
            if batch is not None:
                self.pos.batch += 1
                return _activations(batch, self.index)
            if self.pos.batch == 0:
                break
            self._it, self.pos = None, StreamPosition(self.pos.epoch + 1, 0)
        raise ValueError(
            f"data slice {self.index} yields no full batch of {self.batch_size} training tokens "
            f"(token types {self.spec['token_types'] or 'all'}, validation fraction {self.spec['val_fraction']}): "
            "use a smaller batch size, fewer processes/data slices, or a larger store"
        )


def _activations(batch: Any, index: int) -> torch.Tensor:
    acts = batch.activations if hasattr(batch, "activations") else batch
    if not torch.isfinite(acts).all():
        raise ValueError(f"data slice {index}: a batch contains NaN or Inf activations; the store is damaged")
    return acts


class TrainBatchProvider(Iterator[torch.Tensor]):
    """The sae-lens data provider of one process: `next()` gives its [batch_size, d_in] float32 batch."""

    def __init__(
        self,
        source: BatchSource,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_slices: int = 1,
        token_types: Sequence[str] | None = None,
        val_fraction: float = 0.05,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        """`batch_size` is the global batch (all processes); this process yields batch_size/world_size rows."""
        if num_slices % world_size:
            raise ValueError(
                f"data_slices={num_slices} must be a multiple of the number of processes ({world_size})"
            )
        if batch_size % num_slices:
            raise ValueError(f"batch_size={batch_size} must be divisible by data_slices={num_slices}")
        self.batch_size, self.num_slices = batch_size // world_size, num_slices
        spec = {
            "token_types": list(token_types) if token_types else None,
            "split": split,
            "val_fraction": val_fraction,
        }
        self.streams = []
        for s in range(rank, num_slices, world_size):
            view = source.shard_slice(s, num_slices) if num_slices > 1 else source
            self.streams.append(_SliceStream(view, s, batch_size // num_slices, spec, seed))

    def __next__(self) -> torch.Tensor:
        parts = [s.next() for s in self.streams]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[int, tuple[int, int]]:
        """{slice index: (epoch, batches read)} for this process's slices."""
        return {s.index: (s.pos.epoch, s.pos.batch) for s in self.streams}

    def load_state_dict(self, state: dict[int, tuple[int, int]]) -> None:
        """Resume every slice of this process from `state` (which may hold other processes' slices too)."""
        for s in self.streams:
            if s.index not in state:
                raise ValueError(f"the checkpoint has no data position for slice {s.index}")
            epoch, batch = state[s.index]
            s.pos, s._it = StreamPosition(int(epoch), int(batch)), None


def check_source(source: BatchSource, *, d_in: int | None, token_types: Sequence[str] | None) -> int:
    """Preflight (before anything is written): width and token-type filter; returns the rows selected."""
    if d_in is not None and d_in != source.d_in:
        raise ValueError(
            f"the SAE expects d_in={d_in} but the store holds activations of width {source.d_in}"
        )
    if token_types is not None and len(token_types) == 0:
        raise ValueError("the token-type filter is empty: name at least one token type, or none for all")
    n = source.num_tokens(token_types)
    if n == 0:
        counts = getattr(getattr(source, "manifest", None), "token_type_counts", None)
        raise ValueError(
            f"the token-type filter {list(token_types or [])} selects no tokens (store has {counts})"
        )
    return n


def open_store(path: str) -> BatchSource:
    """The activation store at `path` (`sae.store.ActivationStore`)."""
    if not path:
        raise ValueError("no activation store given (--store)")
    from sae.store import ActivationStore

    return ActivationStore.open(path)
