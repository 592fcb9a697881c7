"""The activation-store format: names, tensors, manifest and shard records (docs/activation_store.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
PROGRESS_DIR = "progress"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROW_TENSORS = ("activations", "doc_id", "position", "token_id", "token_type", "image_rc")


class StoreError(ValueError):
    """A store that cannot be read or written as asked (wrong metadata, corrupt shard, ...)."""


@dataclass(frozen=True)
class StoreMetadata:
    """What a store holds; every shard of a store shares it. Its hash is the store id."""

    backbone: str
    """Hub id, local folder or `tiny:<family>` that produced the activations."""
    family: str
    """Backbone family name."""
    hook_layer: int
    """HF `hidden_states` index (0 = embeddings, L = output of block L − 1)."""
    d_in: int
    """Width of the residual stream."""
    dtype: str
    """Storage dtype of `activations`: float32, bfloat16 or float16."""
    revision: str | None = None
    """Checkpoint revision or commit, when known."""
    data: dict[str, Any] = field(default_factory=dict)
    """Description of the input data (path, kind, fingerprint)."""
    prompt: dict[str, Any] = field(default_factory=dict)
    """Prompt settings (image first or instruction first, system prompt, generation)."""
    weights: dict[str, Any] = field(default_factory=dict)
    """Identity of the weights that produced the activations: `fingerprint` (`sae.identity`) and the `seed`
    the backbone was built or loaded with (random-init and warm-up presets depend on it)."""
    backend: str | None = None
    """How the states were read (nnsight or transformer_lens); they agree only up to float rounding."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise StoreError(f"unknown store dtype {self.dtype!r}; choose one of {sorted(DTYPES)}")

    @property
    def store_id(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def differences(self, other: StoreMetadata) -> list[str]:
        """`name: ours vs theirs` for every differing field (`weights.seed: 0 vs 1` inside dict fields)."""
        out: list[str] = []
        for f in fields(self):
            _differences(f.name, getattr(self, f.name), getattr(other, f.name), out)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreMetadata:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def _differences(name: str, a: Any, b: Any, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            _differences(f"{name}.{key}", a.get(key), b.get(key), out)
    elif a != b:
        out.append(f"{name}: {a!r} vs {b!r}")


@dataclass(frozen=True)
class ShardRecord:
    """One finished shard as listed in the manifest."""

    file: str
    """Path relative to the store root."""
    num_tokens: int
    """Rows in the shard."""
    doc_range: tuple[int, int]
    """First and last doc_id in the shard (inclusive)."""
    num_documents: int
    """Documents in the shard."""
    sha256: str
    """Checksum of the file."""
    token_type_counts: dict[str, int]
    """Rows per token type name."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardRecord:
        return cls(
            file=d["file"],
            num_tokens=int(d["num_tokens"]),
            doc_range=tuple(d["doc_range"]),
            num_documents=int(d["num_documents"]),
            sha256=d["sha256"],
            token_type_counts={k: int(v) for k, v in d["token_type_counts"].items()},
        )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
