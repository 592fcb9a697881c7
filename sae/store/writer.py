"""Write an activation store: whole documents into fixed-size shards, atomically, resumable per rank."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import save_file

from sae.files import atomic_write, atomic_write_text, read_json
from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType

from .format import (
    DTYPES,
    FORMAT_VERSION,
    MANIFEST,
    PROGRESS_DIR,
    SHARD_DIR,
    ShardRecord,
    StoreError,
    StoreMetadata,
    sha256_file,
)

logger = logging.getLogger(__name__)


@dataclass
class CapturedDocument:
    """The hook-layer states of one document's unpadded tokens (n = its number of tokens)."""

    doc_id: int
    """Global index of the document in the input data."""
    source_id: str
    """Identifier in the source data set (file name, sample id)."""
    text: str
    """The document's text (instruction or caption)."""
    activations: torch.Tensor
    """[n, d_in] hook-layer states."""
    token_ids: torch.Tensor
    """[n] vocabulary ids."""
    token_types: torch.Tensor
    """[n] `TokenType` values (no PAD)."""
    image_rc: torch.Tensor
    """[n, 2] image-grid (row, col), −1 for non-image tokens."""
    geometry: ImageGeometry | None
    """How the image tokens map to pixels; None for a text-only document."""

    def __post_init__(self) -> None:
        n = self.activations.shape[0]
        if self.activations.ndim != 2 or any(
            t.shape[0] != n for t in (self.token_ids, self.token_types, self.image_rc)
        ):
            raise StoreError(f"document {self.doc_id}: per-token tensors disagree on the number of tokens")
        if n == 0:
            raise StoreError(f"document {self.doc_id} ({self.source_id}) has no tokens")
        if (self.token_types == TokenType.PAD).any():
            raise StoreError(f"document {self.doc_id}: padding positions must not be stored")
        if not torch.isfinite(self.activations).all():
            raise StoreError(f"document {self.doc_id} ({self.source_id}): activations contain NaN or Inf")


class StoreWriter:
    """Accumulates documents and writes a shard whenever `shard_tokens` rows are buffered.

    One writer per rank. Progress (finished shards, next document) is saved atomically after every shard,
    so `resume=True` continues after an interruption without duplicating or dropping a document: the
    caller asks `done_documents` which documents to skip. Documents that could not be read are recorded
    with `skip` (kept in the progress and listed in the manifest); a resumed run tries them again.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        metadata: StoreMetadata,
        *,
        rank: int = 0,
        shard_tokens: int = 65536,
        resume: bool = False,
    ) -> None:
        self.root = Path(root)
        self.metadata = metadata
        self.rank = rank
        self.shard_tokens = shard_tokens
        self._dtype = DTYPES[metadata.dtype]
        self._buffer: list[CapturedDocument] = []
        self._buffered_ids: set[int] = set()
        self._buffered_tokens = 0
        self.shards: list[ShardRecord] = []
        self.done_documents: set[int] = set()
        self.skipped: dict[int, str] = {}
        self._skips_saved = True
        self._open(resume)

    @property
    def _progress_path(self) -> Path:
        return self.root / PROGRESS_DIR / f"r{self.rank:02d}.json"

    def _open(self, resume: bool) -> None:
        manifest = self.root / MANIFEST
        if manifest.exists() and read_json(manifest, "store manifest").get("complete"):
            raise StoreError(f"{self.root} is a finished store and is immutable; write to a new folder")
        progress = self._progress_path
        if progress.exists():
            state = read_json(progress, "capture progress file")
            theirs = StoreMetadata.from_dict(state["metadata"])
            if theirs != self.metadata:
                diff = "; ".join(theirs.differences(self.metadata))
                raise StoreError(f"{self.root} was written with other settings ({diff}); refusing to append")
            if not resume:
                raise StoreError(
                    f"{self.root} already holds a partial capture; pass resume=True to continue it"
                )
            self.shards = [ShardRecord.from_dict(s) for s in state["shards"]]
            self.done_documents = set(state["done_documents"])
            self.skipped = {int(s["doc_id"]): s["reason"] for s in state.get("skipped", [])}
            for record in self.shards:  # a finished shard must still be intact
                if sha256_file(self.root / record.file) != record.sha256:
                    raise StoreError(f"shard {record.file} does not match its recorded checksum")
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        progress.parent.mkdir(parents=True, exist_ok=True)
        for stale in (self.root / SHARD_DIR).glob(f".r{self.rank:02d}-*.tmp*"):
            stale.unlink()  # a shard whose write was interrupted
        if self.shards:
            logger.info(
                "resuming rank %d: %d shards, %d documents done",
                self.rank,
                len(self.shards),
                len(self.done_documents),
            )

    def add(self, doc: CapturedDocument) -> None:
        """Buffer one document; writes a shard when the buffer reaches `shard_tokens` rows."""
        if doc.activations.shape[1] != self.metadata.d_in:
            raise StoreError(
                f"document {doc.doc_id}: activations have width {doc.activations.shape[1]}, store d_in is {self.metadata.d_in}"
            )
        if doc.doc_id in self.done_documents or doc.doc_id in self._buffered_ids:
            raise StoreError(f"document {doc.doc_id} is already in the store")
        if self.skipped.pop(doc.doc_id, None) is not None:
            self._skips_saved = False  # skipped by an earlier run, readable now
        self._buffer.append(doc)
        self._buffered_ids.add(doc.doc_id)
        self._buffered_tokens += doc.activations.shape[0]
        if self._buffered_tokens >= self.shard_tokens:
            self.flush()

    def skip(self, doc_id: int, reason: str) -> None:
        """Record that document `doc_id` was left out, and why (saved with the next progress)."""
        self.skipped[doc_id] = reason
        self._skips_saved = False

    def flush(self) -> None:
        """Write the buffered documents as one shard (atomically) and record the progress."""
        if not self._buffer:
            return
        docs, self._buffer, self._buffered_tokens = self._buffer, [], 0
        self._buffered_ids = set()
        name = f"r{self.rank:02d}-{len(self.shards):06d}.safetensors"
        path = self.root / SHARD_DIR / name
        tensors = {
            "activations": torch.cat([d.activations for d in docs]).to(self._dtype).contiguous(),
            "doc_id": torch.cat([torch.full((len(d.token_ids),), d.doc_id, dtype=torch.int64) for d in docs]),
            "position": torch.cat([torch.arange(len(d.token_ids), dtype=torch.int32) for d in docs]),
            "token_id": torch.cat([d.token_ids for d in docs]).to(torch.int32),
            "token_type": torch.cat([d.token_types for d in docs]).to(torch.int8),
            "image_rc": torch.cat([d.image_rc for d in docs]).to(torch.int16),
        }
        documents = [
            {
                "doc_id": d.doc_id,
                "source_id": d.source_id,
                "num_tokens": len(d.token_ids),
                "text": d.text,
                "geometry": d.geometry.to_dict() if d.geometry is not None else None,
            }
            for d in docs
        ]
        header = {"documents": json.dumps(documents)}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
        kinds, freq = torch.unique(tensors["token_type"], return_counts=True)
        names = [TokenType(int(k)).name.lower() for k in kinds.tolist()]
        counts = Counter(dict(zip(names, freq.tolist(), strict=True)))
        self.shards.append(
            ShardRecord(
                file=f"{SHARD_DIR}/{name}",
                num_tokens=int(tensors["doc_id"].numel()),
                doc_range=(min(d.doc_id for d in docs), max(d.doc_id for d in docs)),
                num_documents=len(docs),
                sha256=sha256_file(path),
                token_type_counts=dict(counts),
            )
        )
        self.done_documents.update(d.doc_id for d in docs)
        self._save_progress()

    def _save_progress(self) -> None:
        state = {
            "metadata": asdict(self.metadata),
            "shards": [asdict(s) for s in self.shards],
            "done_documents": sorted(self.done_documents),
            "skipped": [{"doc_id": d, "reason": r} for d, r in sorted(self.skipped.items())],
        }
        atomic_write_text(self._progress_path, json.dumps(state))
        self._skips_saved = True

    def close(self) -> None:
        """Flush what is buffered (the rank's last, possibly smaller, shard) and the skips."""
        self.flush()
        if not self._skips_saved:
            self._save_progress()


def finalize_store(root: str | os.PathLike, metadata: StoreMetadata, num_ranks: int = 1) -> dict:
    """Merge the ranks' progress into `manifest.json` (complete, immutable) and remove the progress files."""
    root = Path(root)
    shards: list[ShardRecord] = []
    skipped: list[dict] = []
    for rank in range(num_ranks):
        progress = root / PROGRESS_DIR / f"r{rank:02d}.json"
        if not progress.exists():
            raise StoreError(f"rank {rank} has no progress file in {root}; did every rank finish?")
        state = read_json(progress, "capture progress file")
        theirs = StoreMetadata.from_dict(state["metadata"])
        if theirs != metadata:
            raise StoreError(f"rank {rank} wrote other settings: {'; '.join(theirs.differences(metadata))}")
        shards += [ShardRecord.from_dict(s) for s in state["shards"]]
        skipped += state.get("skipped", [])
    shards.sort(key=lambda s: s.doc_range[0])
    counts: Counter[str] = Counter()
    for s in shards:
        counts.update(s.token_type_counts)
    manifest = {
        "format_version": FORMAT_VERSION,
        "store_id": metadata.store_id,
        **asdict(metadata),
        "token_type_counts": dict(sorted(counts.items())),
        "num_tokens": sum(s.num_tokens for s in shards),
        "num_documents": sum(s.num_documents for s in shards),
        "shards": [asdict(s) for s in shards],
        "skipped_documents": sorted(skipped, key=lambda s: s["doc_id"]),
        "complete": True,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    for rank in range(num_ranks):
        (root / PROGRESS_DIR / f"r{rank:02d}.json").unlink()
    if not any((root / PROGRESS_DIR).iterdir()):
        (root / PROGRESS_DIR).rmdir()
    logger.info(
        "store %s finished: %d tokens in %d shards", metadata.store_id, manifest["num_tokens"], len(shards)
    )
    return manifest
