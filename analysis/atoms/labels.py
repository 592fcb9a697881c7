"""Offline labels of atoms from their top examples, and per-token label indicators to test them.

- An atom whose top examples are mostly image tokens is an **image atom**: each example patch is described
  by the instance covering the patch centre (its colour, shape) or "background" (no instance there), from
  the corpus's instance masks; the label is the most common value of the first facet that reaches the
  highest purity (facets in `label_facets` order, then "background").
- Otherwise it is a **text atom**: the most common lower-cased word at the example tokens ("token" label),
  or, when more examples share it, a word within ±window of them ("context" label, written "near: w").

Purity is the share of the atom's top examples (those that can be described) that agree with the label.
`TokenIndicators` says, for every token of a shard, whether each label is present there, so the label can
be tested on held-out documents (see `atom_consistency`).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.atoms.examples import Examples, TokenText
from analysis.common.activity import DocumentMeta
from analysis.common.inputs import AnalysisInputError
from analysis.common.instances import InstanceIndex
from sae.token_types import TokenType

logger = logging.getLogger(__name__)

FACETS = ("colour", "shape", "colour+shape")
"""Instance attributes an image label can name ("colour+shape": both, e.g. "red circle")."""
IMAGE_KINDS = (*FACETS, "background")
TEXT_KINDS = ("token", "context")
UNKNOWN, BACKGROUND, ON_INSTANCE = -1, 0, 1


@dataclass(frozen=True)
class PatchGrid:
    """What lies under the centre of each cell of one image's token grid (G = rows × cols cells)."""

    state: np.ndarray
    """int8 [G] −1 unknown (cell outside the image), 0 background, 1 on an instance."""
    colour: np.ndarray
    """object [G] the instance's colour ("" where none)."""
    shape: np.ndarray
    """object [G] the instance's shape ("" where none)."""

    def facet(self, name: str) -> np.ndarray:
        if name == "colour+shape":
            return np.array(
                [f"{c} {s}".strip() for c, s in zip(self.colour, self.shape, strict=True)], dtype=object
            )
        return getattr(self, name)


class PatchAttributes:
    """Per-document `PatchGrid`s from instance masks (an LRU cache of `cache_size` documents)."""

    def __init__(self, instances: InstanceIndex | None, cache_size: int = 2048) -> None:
        self.instances = instances
        self.cache_size = cache_size
        self._cache: OrderedDict[int, PatchGrid | None] = OrderedDict()

    def grid(self, meta: DocumentMeta) -> PatchGrid | None:
        """The document's grid, or None without geometry or instance masks."""
        if meta.doc_id in self._cache:
            self._cache.move_to_end(meta.doc_id)
            return self._cache[meta.doc_id]
        grid = self._compute(meta)
        self._cache[meta.doc_id] = grid
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return grid

    def _compute(self, meta: DocumentMeta) -> PatchGrid | None:
        geom = meta.geometry
        insts = self.instances.get(meta.source_id) if self.instances is not None else None
        if geom is None or insts is None:
            return None
        boxes = geom.token_boxes()
        h, w = geom.original_size
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        px = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2).astype(np.int64), 0, w - 1)
        py = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2).astype(np.int64), 0, h - 1)
        state = np.where(inside, BACKGROUND, UNKNOWN).astype(np.int8)
        colour = np.full(len(boxes), "", dtype=object)
        shape = np.full(len(boxes), "", dtype=object)
        for inst in insts:
            if inst.size != (h, w):
                raise AnalysisInputError(
                    f"document {meta.doc_id} ({meta.source_id}): instance {inst.id}'s mask is {inst.size}, "
                    f"the captured image is {(h, w)} (h, w); wrong mask source?"
                )
            hit = inside & (state == BACKGROUND) & inst.mask()[py, px]
            state[hit] = ON_INSTANCE
            colour[hit] = inst.colour or ""
            shape[hit] = inst.shape or ""
        return PatchGrid(state, colour, shape)

    def tokens(self, meta: DocumentMeta, image_rc: np.ndarray) -> PatchGrid | None:
        """The grid's entries at image tokens (image_rc [n, 2]); None when the document has no grid."""
        grid = self.grid(meta)
        if grid is None:
            return None
        idx = image_rc[:, 0].astype(np.int64) * meta.geometry.grid[1] + image_rc[:, 1].astype(np.int64)
        return PatchGrid(grid.state[idx], grid.colour[idx], grid.shape[idx])


def _best(counts: list[tuple[str, str, int]], total: int) -> tuple[str, str, float] | None:
    """(kind, value, purity) of the highest count; the first listed wins ties."""
    if not counts or total == 0:
        return None
    kind, value, n = max(counts, key=lambda c: c[2])  # max keeps the first of equals
    return (kind, value, n / total) if n > 0 else None


def _ranked(values) -> list[tuple[str, int]]:
    """Counts of non-empty values, most common first, ties alphabetical."""
    return sorted(((v, n) for v, n in Counter(v for v in values if v).items()), key=lambda t: (-t[1], t[0]))


def label_atoms(
    examples: Examples,
    atoms: np.ndarray,
    attributes: PatchAttributes,
    *,
    facets: list[str],
    image_labels: bool,
    min_examples: int,
    window: int,
    text: TokenText,
    documents: dict[int, DocumentMeta],
) -> pd.DataFrame:
    """One row per atom: atom, modality (image / text / none), label, label_kind, label_value, purity,
    n_examples (top examples above threshold), n_described (those a label could describe)."""
    bad = [f for f in facets if f not in FACETS]
    if bad:
        raise AnalysisInputError(f"unknown label facets {bad}; choose from {FACETS}")
    ex = examples.table
    ctx_words = text.words(examples.context_ids) if len(ex) else np.zeros((0, 2 * window + 1), dtype=object)
    is_image = (ex["token_type"] == "image").to_numpy()
    state = np.full(len(ex), UNKNOWN, dtype=np.int8)
    facet_values = {f: np.full(len(ex), "", dtype=object) for f in facets}
    if image_labels and is_image.any():
        for doc, idx in ex.index[is_image].groupby(ex["doc_id"][is_image]).items():
            rc = ex.loc[idx, ["image_row", "image_col"]].to_numpy()
            got = attributes.tokens(documents[int(doc)], rc)
            if got is None:
                continue
            state[idx] = got.state
            for f in facets:
                facet_values[f][idx] = got.facet(f)
    rows = []
    groups = ex.groupby("atom").indices if len(ex) else {}
    for atom in atoms.tolist():
        idx = groups.get(atom, np.zeros(0, dtype=np.int64))
        row = {
            "atom": atom,
            "modality": "none",
            "label": None,
            "label_kind": None,
            "label_value": None,
            "purity": np.nan,
            "n_examples": len(idx),
            "n_described": 0,
        }
        if len(idx) == 0:
            rows.append(row)
            continue
        image_share = is_image[idx].mean()
        best = None
        if image_share >= 0.5:
            row["modality"] = "image"
            known = idx[is_image[idx] & (state[idx] >= 0)]
            row["n_described"] = len(known)
            counts = [(f, v, n) for f in facets for v, n in _ranked(facet_values[f][known])[:1]]
            counts.append(("background", "background", int((state[known] == BACKGROUND).sum())))
            best = _best(counts, len(known)) if len(known) >= min_examples else None
        else:
            row["modality"] = "text"
            txt = idx[~is_image[idx]]
            row["n_described"] = len(txt)
            words = ex["word"].to_numpy()[txt]
            around = ctx_words[txt].copy()
            around[:, window] = ""
            counts = [("token", v, n) for v, n in _ranked(words)[:1]]
            counts += [("context", v, n) for v, n in _ranked(w for r in around for w in set(r))[:1]]
            best = _best(counts, len(txt)) if len(txt) >= min_examples else None
        if best is not None:
            kind, value, purity = best
            row.update(label=display(kind, value), label_kind=kind, label_value=value, purity=purity)
        rows.append(row)
    return pd.DataFrame(rows)


def display(kind: str, value: str) -> str:
    """The short label string: the value, or "near: <word>" for a context label."""
    return f"near: {value}" if kind == "context" else value


class TokenIndicators:
    """For the selected rows of a shard: is each label present at each token, and may it be judged there?

    Labels are (kind, value) pairs. Image labels are judged on image tokens whose patch centre is known
    (document with geometry and instance masks); text labels on every non-image token.
    """

    def __init__(
        self, labels: list[tuple[str, str]], attributes: PatchAttributes, text: TokenText, window: int
    ):
        self.labels, self.attributes, self.text, self.window = labels, attributes, text, window

    def __call__(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(present bool [n, L], judged bool [n, 2]: column 0 image labels, column 1 text labels)."""
        n = rows.row_id.numel()
        tt = rows.token_type.numpy()
        is_image = tt == int(TokenType.IMAGE)
        state = np.full(n, UNKNOWN, dtype=np.int8)
        facet = {f: np.full(n, "", dtype=object) for f in FACETS}
        doc = rows.doc_id.numpy()
        rc = rows.image_rc.numpy()
        if is_image.any() and any(k in IMAGE_KINDS for k, _ in self.labels):
            for d in np.unique(doc[is_image]).tolist():
                sel = np.flatnonzero(is_image & (doc == d))
                got = self.attributes.tokens(rows.documents[d], rc[sel])
                if got is not None:
                    state[sel] = got.state
                    for f in FACETS:
                        facet[f][sel] = got.facet(f)
        words = self.text.words(rows.token_id.numpy())
        present = np.zeros((n, len(self.labels)), dtype=bool)
        context = None
        for j, (kind, value) in enumerate(self.labels):
            if kind == "background":
                present[:, j] = state == BACKGROUND
            elif kind in FACETS:
                present[:, j] = (state == ON_INSTANCE) & (facet[kind] == value)
            elif kind == "token":
                present[:, j] = ~is_image & (words == value)
            elif kind == "context":
                if context is None:
                    context = self._context_keys(rows)
                present[:, j] = ~is_image & self._near(context, value, rows)
        judged = np.stack([is_image & (state >= 0), ~is_image], axis=1)
        return present, judged

    def _context_keys(self, rows) -> tuple[np.ndarray, np.ndarray]:
        keys = rows.shard_doc_id.numpy().astype(np.int64) * (1 << 32) + rows.shard_position.numpy()
        return keys, self.text.words(rows.shard_token_id.numpy())

    def _near(self, context: tuple[np.ndarray, np.ndarray], value: str, rows) -> np.ndarray:
        keys, words = context
        occ = np.sort(keys[words == value])
        mine = rows.doc_id.numpy().astype(np.int64) * (1 << 32) + rows.position.numpy()
        out = np.zeros(len(mine), dtype=bool)
        if occ.size == 0:
            return out
        for o in range(-self.window, self.window + 1):
            if o == 0:
                continue
            j = np.minimum(np.searchsorted(occ, mine + o), occ.size - 1)
            out |= occ[j] == mine + o
        return out
