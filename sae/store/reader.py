"""Read an activation store: shuffled, filtered batches with bounded memory, documents, rank slices."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open

from sae.files import read_json
from sae.token_types import TokenType

from .format import FORMAT_VERSION, MANIFEST, ROW_TENSORS, ShardRecord, StoreError, StoreMetadata, sha256_file

logger = logging.getLogger(__name__)


@dataclass
class ActivationBatch:
    """A batch of store rows (B rows)."""

    activations: torch.Tensor
    """[B, d_in] float32."""
    token_type: torch.Tensor
    """[B] int8 `TokenType` values."""
    doc_id: torch.Tensor
    """[B] int64."""
    position: torch.Tensor
    """[B] int32, index in the document's sequence."""
    token_id: torch.Tensor
    """[B] int32."""
    image_rc: torch.Tensor
    """[B, 2] int16, image-grid (row, col) or −1."""


@dataclass(frozen=True)
class Manifest:
    """The parsed `manifest.json` of a finished store."""

    metadata: StoreMetadata
    store_id: str
    shards: tuple[ShardRecord, ...]
    token_type_counts: dict[str, int]
    num_tokens: int
    num_documents: int

    @property
    def hook_layer(self) -> int:
        return self.metadata.hook_layer

    @property
    def backbone(self) -> str:
        return self.metadata.backbone


def _is_val(doc_id: torch.Tensor, fraction: float) -> torch.Tensor:
    """Deterministic document-level hold-out: a multiplicative hash of the doc id, thresholded."""
    h = (doc_id * 2654435761) % (1 << 32)
    return h < int(fraction * (1 << 32))


class ActivationStore:
    """A finished activation store (or a rank's slice of one). Open with `ActivationStore.open(path)`."""

    def __init__(self, root: Path, manifest: Manifest, verify: bool = True) -> None:
        self.root = root
        self.manifest = manifest
        self.verify = verify
        self._verified: set[str] = set()

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True) -> ActivationStore:
        """Open a finished store; `verify` checks each shard's checksum the first time it is read."""
        root = Path(path)
        file = root / MANIFEST
        if not file.exists():
            partial = (root / "progress").exists()
            raise StoreError(
                f"{root} has no {MANIFEST}"
                + (
                    "; the capture there is unfinished (resume it)"
                    if partial
                    else "; is it an activation store?"
                )
            )
        raw = read_json(file, "store manifest")
        if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
            version = raw.get("format_version") if isinstance(raw, dict) else None
            raise StoreError(f"{file}: store format {version} is not supported (need {FORMAT_VERSION})")
        try:
            manifest = Manifest(
                metadata=StoreMetadata.from_dict(raw),
                store_id=raw["store_id"],
                shards=tuple(ShardRecord.from_dict(s) for s in raw["shards"]),
                token_type_counts=raw["token_type_counts"],
                num_tokens=raw["num_tokens"],
                num_documents=raw["num_documents"],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(
                f"store manifest {file} is damaged ({type(err).__name__}: {err}); restore it or capture again"
            ) from None
        return cls(root, manifest, verify)

    # ---- metadata ------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.manifest.metadata.d_in

    @property
    def store_id(self) -> str:
        return self.manifest.store_id

    def num_tokens(self, token_types: Sequence[str | int | TokenType] | None = None) -> int:
        """Rows in this store (or slice), optionally only of the given token types."""
        if token_types is None:
            return sum(s.num_tokens for s in self.manifest.shards)
        names = {TokenType.parse(t).name.lower() for t in token_types}
        return sum(n for s in self.manifest.shards for k, n in s.token_type_counts.items() if k in names)

    def shard_slice(self, rank: int, world_size: int) -> ActivationStore:
        """The shards rank `rank` of `world_size` reads (round-robin); raises if a rank would get none."""
        shards = self.manifest.shards[rank::world_size]
        if not shards:
            raise StoreError(f"{len(self.manifest.shards)} shards cannot be split over {world_size} ranks")
        view = replace(self.manifest, shards=shards)
        return ActivationStore(self.root, view, self.verify)

    # ---- rows ----------------------------------------------------------------------------------
    def shard_path(self, record: ShardRecord) -> Path:
        """The file of a shard, checked against its recorded checksum the first time (when verifying): a
        missing, truncated or altered shard is a `StoreError` naming it, before any reader parses it."""
        path = self.root / record.file
        if not path.exists():
            raise StoreError(f"shard {path} of store {self.store_id} is missing; capture the store again")
        if self.verify and record.file not in self._verified:
            if sha256_file(path) != record.sha256:
                raise StoreError(
                    f"shard {path} is corrupt or truncated (checksum mismatch); capture the store again"
                )
            self._verified.add(record.file)
        return path

    def read_shard(self, record: ShardRecord, names: Sequence[str] = ROW_TENSORS) -> dict[str, torch.Tensor]:
        """Tensors `names` of one (checked) shard."""
        path = self.shard_path(record)
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in names}
        except Exception as err:  # safetensors raises several types for a damaged file
            raise StoreError(f"shard {path} cannot be read ({err}); capture the store again") from None

    def shard_documents(self, record: ShardRecord) -> list[dict]:
        """The documents a (checked) shard's header records (docs/activation_store.md)."""
        path = self.shard_path(record)
        try:
            with safe_open(str(path), framework="pt") as f:
                return json.loads(f.metadata()["documents"])
        except Exception as err:
            raise StoreError(f"shard {path}: its document list cannot be read ({err})") from None

    def load_shard(self, record: ShardRecord) -> dict[str, torch.Tensor]:
        """All tensors of one shard; a missing, truncated or altered file is a clear error."""
        tensors = self.read_shard(record)
        if tensors["activations"].shape != (record.num_tokens, self.d_in):
            raise StoreError(
                f"shard {record.file}: activations {tuple(tensors['activations'].shape)} do not match the manifest"
            )
        return tensors

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        token_types: Sequence[str | int | TokenType] | None = None,
        split: str = "all",
        val_fraction: float = 0.05,
        buffer_shards: int = 4,
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> Iterator[ActivationBatch]:
        """Stream batches of rows; memory holds at most `buffer_shards` shards (+ one batch).

        Args:
            shuffle: shard order and rows within each buffer are permuted by `seed`.
            token_types: keep only rows of these types (names or values); an empty result is an error.
            split: "all", "train" or "val" — a deterministic document-level hold-out of `val_fraction`.
            start_batch: skip this many batches first (exact resume of a reader with the same arguments).
        """
        if split not in ("all", "train", "val"):
            raise ValueError(f"split must be 'all', 'train' or 'val', got {split!r}")
        keep_types = None
        if token_types is not None:
            keep_types = torch.tensor(
                sorted({int(TokenType.parse(t)) for t in token_types}), dtype=torch.int8
            )
            if self.num_tokens(token_types) == 0:
                have = {k: v for k, v in self.manifest.token_type_counts.items() if v}
                raise StoreError(
                    f"no rows of token types {list(token_types)} in store {self.store_id} (it has {have})"
                )
        gen = torch.Generator().manual_seed(seed)
        order = (
            torch.randperm(len(self.manifest.shards), generator=gen)
            if shuffle
            else torch.arange(len(self.manifest.shards))
        )
        pending: dict[str, torch.Tensor] | None = None
        emitted = 0
        for start in range(0, len(order), buffer_shards):
            parts = [
                self._rows(self.manifest.shards[i], keep_types, split, val_fraction)
                for i in order[start : start + buffer_shards]
            ]
            if pending is not None:
                parts.insert(0, pending)
            rows = {k: torch.cat([p[k] for p in parts]) for k in ROW_TENSORS}
            n = rows["doc_id"].numel()
            if shuffle:
                perm = torch.randperm(n, generator=gen)
                rows = {k: v[perm] for k, v in rows.items()}
            full = n // batch_size * batch_size
            for b in range(0, full, batch_size):
                if emitted >= start_batch:
                    yield _batch({k: v[b : b + batch_size] for k, v in rows.items()})
                emitted += 1
            pending = {k: v[full:] for k, v in rows.items()}
        if pending is not None and pending["doc_id"].numel() and not drop_last and emitted >= start_batch:
            yield _batch(pending)

    def _rows(
        self, record: ShardRecord, keep_types, split: str, val_fraction: float
    ) -> dict[str, torch.Tensor]:
        rows = self.load_shard(record)
        keep = torch.ones(record.num_tokens, dtype=torch.bool)
        if keep_types is not None:
            keep &= torch.isin(rows["token_type"], keep_types)
        if split != "all":
            val = _is_val(rows["doc_id"], val_fraction)
            keep &= val if split == "val" else ~val
        if not bool(keep.all()):
            rows = {k: v[keep] for k, v in rows.items()}
        if not torch.isfinite(rows["activations"]).all():
            raise StoreError(f"shard {record.file} contains NaN or Inf activations")
        return rows

    def documents(self) -> pd.DataFrame:
        """One row per document: doc_id, source_id, num_tokens, text, geometry (dict or None), shard."""
        records = []
        for shard in self.manifest.shards:
            for doc in self.shard_documents(shard):
                records.append({**doc, "shard": shard.file})
        return pd.DataFrame.from_records(records).sort_values("doc_id", ignore_index=True)


def _batch(rows: dict[str, torch.Tensor]) -> ActivationBatch:
    return ActivationBatch(
        activations=rows["activations"].float(),
        token_type=rows["token_type"],
        doc_id=rows["doc_id"],
        position=rows["position"],
        token_id=rows["token_id"],
        image_rc=rows["image_rc"],
    )
