"""Max-activating examples of atoms: store rows → document, token text with its context, patch pixel box.

`lookup_examples` reads, for the shards that hold an atom's top rows, only the small per-row tensors
(doc id, position, token id and type, image_rc), never the activations, and builds one table row per
example. Token text comes from `TokenText`: the backbone's tokenizer when one is available, else `#<id>`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.atoms.scan import AtomScan
from analysis.atoms.stream import shard_documents, unpack_row
from analysis.common.activity import DocumentMeta
from sae.store import ActivationStore
from sae.token_types import TokenType

logger = logging.getLogger(__name__)

MARK = ("[[", "]]")
"""Marks around the example token in its context string."""


class TokenText:
    """Token id → text piece and lower-cased word, decoded once per id (cached).

    Args:
        tokenizer: anything with `.decode(list[int])` (a Hugging Face tokenizer), a mapping id → piece, or
            None: pieces are then `#<id>`.
    """

    def __init__(self, tokenizer: Any | None = None) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    @property
    def available(self) -> bool:
        return self.tokenizer is not None

    def piece(self, token_id: int) -> str:
        tid = int(token_id)
        if tid not in self._cache:
            if self.tokenizer is None:
                text = f"#{tid} "
            elif isinstance(self.tokenizer, Mapping):
                text = str(self.tokenizer.get(tid, f"#{tid} "))
            else:
                text = self.tokenizer.decode([tid])
            self._cache[tid] = text
        return self._cache[tid]

    def word(self, token_id: int) -> str:
        """The piece stripped and lower-cased ("" for whitespace)."""
        return self.piece(token_id).strip().lower()

    def words(self, token_ids: np.ndarray) -> np.ndarray:
        """object [n] words of an id array (−1 → "")."""
        ids = np.asarray(token_ids)
        uniq, inv = np.unique(ids, return_inverse=True)
        table = np.array([self.word(t) if t >= 0 else "" for t in uniq.tolist()], dtype=object)
        return table[inv.reshape(ids.shape)]

    def context(self, ids: np.ndarray, centre: int) -> str:
        """The pieces of a context window joined, the centre token marked with `MARK`."""
        parts = []
        for i, tid in enumerate(ids.tolist()):
            if tid < 0:
                continue
            p = self.piece(tid)
            parts.append(f"{MARK[0]}{p}{MARK[1]}" if i == centre else p)
        return "".join(parts).strip()


def resolve_tokenizer(spec: str | None, store: ActivationStore) -> Any | None:
    """The tokenizer named by `spec`: "none", a folder or hub id, or "auto" (from the store's backbone).

    "auto" builds the tiny preset's tokenizer for `tiny:<family>` / `warm:<family>` stores (warmed-up
    presets keep it), loads a local folder's tokenizer, or tries the hub id offline; when nothing works
    the token ids are shown instead (logged, not an error).
    """
    if spec is None or spec == "none":
        return None
    name = store.manifest.backbone if spec == "auto" else spec
    try:
        if name.startswith(("tiny:", "warm:")):
            from segcompass.backbones import build_tiny, get_family

            family = name.split(":", 1)[1] or "qwen2_5_vl"
            get_family(family)  # unknown family → error before building anything
            return build_tiny(family).tokenizer
        from transformers import AutoTokenizer

        if Path(name).is_dir():
            return AutoTokenizer.from_pretrained(name, local_files_only=True)
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # any failure just means "show ids"
        if spec != "auto":
            raise ValueError(f"cannot load tokenizer {spec!r}: {err}") from err
        logger.warning("no tokenizer for backbone %r (%s); token texts are shown as ids", name, err)
        return None


@dataclass
class Examples:
    """The top examples of every atom (n examples, window w)."""

    table: pd.DataFrame
    """One row per example: atom, rank, activation, row_id, doc_id, source_id, position, token_id,
    token_type, token, word, image_row, image_col, x0, y0, x1, y1 (pixel box, NaN off-image), context."""
    context_ids: np.ndarray
    """int64 [n, 2w + 1] token ids at positions −w … +w of each example (−1: none)."""
    documents: dict[int, DocumentMeta]
    """The documents of the examples, by doc id."""


def _context_ids(
    doc_id: np.ndarray, position: np.ndarray, token_id: np.ndarray, rows: np.ndarray, window: int
):
    key = doc_id.astype(np.int64) * (1 << 32) + position.astype(np.int64)
    order = np.argsort(key, kind="stable")
    skeys = key[order]
    out = np.full((len(rows), 2 * window + 1), -1, dtype=np.int64)
    for o in range(-window, window + 1):
        target = key[rows] + o
        j = np.minimum(np.searchsorted(skeys, target), len(skeys) - 1)
        hit = skeys[j] == target
        out[:, o + window] = np.where(hit, token_id[order[j]], -1)
    return out


def lookup_examples(
    store: ActivationStore, scan: AtomScan, *, threshold: float, window: int, text: TokenText
) -> Examples:
    """The examples (codes above `threshold`) of `scan`'s reservoirs, with their documents and contexts."""
    valid = scan.top_values > threshold
    a_idx, rank = np.nonzero(valid)
    ids = scan.top_ids[a_idx, rank]
    shard, row = unpack_row(ids)
    n = len(ids)
    cols: dict[str, np.ndarray] = {
        "doc_id": np.zeros(n, np.int64),
        "position": np.zeros(n, np.int64),
        "token_id": np.zeros(n, np.int64),
        "token_type_value": np.zeros(n, np.int64),
        "image_row": np.full(n, -1, np.int64),
        "image_col": np.full(n, -1, np.int64),
    }
    box = np.full((n, 4), np.nan)
    source = np.empty(n, dtype=object)
    ctx = np.full((n, 2 * window + 1), -1, dtype=np.int64)
    used: dict[int, DocumentMeta] = {}
    for s in np.unique(shard).tolist():
        record = store.manifest.shards[s]
        sel = np.flatnonzero(shard == s)
        r = row[sel]
        names = ("doc_id", "position", "token_id", "token_type", "image_rc")
        t = {k: v.numpy() for k, v in store.read_shard(record, names).items()}
        docs = shard_documents(store, record.file)
        cols["doc_id"][sel] = t["doc_id"][r]
        cols["position"][sel] = t["position"][r]
        cols["token_id"][sel] = t["token_id"][r]
        cols["token_type_value"][sel] = t["token_type"][r]
        cols["image_row"][sel] = t["image_rc"][r, 0]
        cols["image_col"][sel] = t["image_rc"][r, 1]
        ctx[sel] = _context_ids(t["doc_id"], t["position"], t["token_id"], r, window)
        boxes: dict[int, np.ndarray | None] = {}
        for i, d, rr, cc in zip(sel, t["doc_id"][r], t["image_rc"][r, 0], t["image_rc"][r, 1], strict=True):
            meta = used.setdefault(int(d), docs[int(d)])
            source[i] = meta.source_id
            if rr < 0 or meta.geometry is None:
                continue
            if int(d) not in boxes:
                boxes[int(d)] = meta.geometry.token_boxes()
            box[i] = boxes[int(d)][int(rr) * meta.geometry.grid[1] + int(cc)]
    table = pd.DataFrame(
        {
            "atom": scan.atoms[a_idx],
            "rank": rank,
            "activation": scan.top_values[a_idx, rank].astype(np.float64),
            "row_id": ids,
            "doc_id": cols["doc_id"],
            "source_id": source,
            "position": cols["position"],
            "token_id": cols["token_id"],
            "token_type": [TokenType(int(v)).name.lower() for v in cols["token_type_value"]],
            "token": [text.piece(t) for t in cols["token_id"]],
            "word": text.words(cols["token_id"]) if n else np.zeros(0, dtype=object),
            "image_row": cols["image_row"],
            "image_col": cols["image_col"],
            "x0": box[:, 0],
            "y0": box[:, 1],
            "x1": box[:, 2],
            "y1": box[:, 3],
            "context": [text.context(c, window) for c in ctx],
        }
    )
    return Examples(table, ctx, used)
