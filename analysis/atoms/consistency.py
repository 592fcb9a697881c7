"""Does an atom's label predict where it fires on held-out documents? ROC-AUC, precision and recall.

For every labelled atom, the store's held-out documents (its document-level "val" split) are streamed; at
each token where the label can be judged (image labels: image tokens with known patch attributes; text
labels: non-image tokens) the label indicator y ("label present here") is compared with the atom's code h:

- ROC-AUC of h as a score for y, from per-atom histograms of h (bins log-spaced relative to the atom's
  largest training code, plus an exact bin for h ≤ 0): codes in one bin count as ties (½), so the AUC is
  exact whenever positives and negatives do not share a bin (e.g. ReLU codes that are 0 off the label);
- precision and recall of "h > threshold" for y.

The same is measured with the labels permuted across atoms of the same modality (`shuffles` times): what a
label that was not derived from the atom's examples scores — the chance level of the consistency score.
Memory per pass is O(atoms × bins × 2 × (1 + shuffles)) plus one shard and one block.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from analysis.atoms.examples import TokenText
from analysis.atoms.labels import IMAGE_KINDS, PatchAttributes, TokenIndicators
from analysis.atoms.scan import atom_chunks
from analysis.atoms.stream import AtomEncoder, iter_shard_rows
from analysis.common.inputs import AnalysisInputError
from sae.store import ActivationStore
from sae.token_types import TokenType

logger = logging.getLogger(__name__)


@dataclass
class Consistency:
    """Label consistency on held-out documents (one row per labelled atom, S shuffles)."""

    per_atom: pd.DataFrame
    """atom, auc, precision, recall, val_positives, val_judged, shuffled_auc / _precision / _recall (means
    over the shuffles)."""
    shuffled: pd.DataFrame
    """atom, shuffle, label_kind, label_value (the permuted label), auc, precision, recall."""
    val_tokens: int
    """Held-out rows read."""


def auc_from_hist(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC-AUC from score histograms [..., bins] of positives and negatives (ties within a bin count ½)."""
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    below = np.cumsum(neg, -1) - neg
    num = (pos * (below + 0.5 * neg)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), num / np.maximum(n_pos * n_neg, 1), np.nan)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.maximum(b, 1), np.nan)


def label_consistency(
    store: ActivationStore,
    encoder: AtomEncoder,
    labels: pd.DataFrame,
    scale: np.ndarray,
    attributes: PatchAttributes,
    text: TokenText,
    *,
    threshold: float,
    token_types: Sequence[str | int | TokenType] | None,
    val_fraction: float,
    window: int,
    auc_bins: int,
    shuffles: int,
    seed: int,
    atom_chunk: int,
    atoms_per_pass: int | None,
    chunk_elements: int,
    progress: bool = True,
    desc: str = "label consistency",
) -> Consistency:
    """Consistency of `labels` (rows with atom, label_kind, label_value; `scale` [len(labels)] each atom's
    largest training code) on the store's held-out documents."""
    n_lab = len(labels)
    if n_lab == 0:
        return Consistency(pd.DataFrame(columns=["atom", "auc", "precision", "recall"]), pd.DataFrame(), 0)
    pairs = list(zip(labels["label_kind"], labels["label_value"], strict=True))
    label_list = list(dict.fromkeys(pairs))
    own = np.array([label_list.index(p) for p in pairs])
    modality = np.array([0 if k in IMAGE_KINDS else 1 for k, _ in pairs])
    rng = np.random.default_rng(seed)
    assign = [own]
    for _ in range(shuffles):
        perm = own.copy()
        for m in (0, 1):
            idx = np.flatnonzero(modality == m)
            perm[idx] = own[idx][rng.permutation(len(idx))]
        assign.append(perm)
    assign_t = torch.as_tensor(np.stack(assign, 1), dtype=torch.long)  # [n_lab, V]
    n_var = assign_t.shape[1]
    mod_t = torch.as_tensor(modality, dtype=torch.long)
    scale_t = torch.as_tensor(np.where(np.isfinite(scale) & (scale > 0), scale, 1.0), dtype=torch.float32)
    edges = torch.logspace(-4, 1, auc_bins - 1, dtype=torch.float32)
    n_bins = auc_bins + 1
    atom_ids = torch.tensor(labels["atom"].to_numpy(), dtype=torch.long)
    indicators = TokenIndicators(label_list, attributes, text, window)
    hist = np.zeros((n_lab, n_bins, 2, n_var), dtype=np.int64)
    counts = np.zeros((n_lab, 3, n_var), dtype=np.int64)  # tp, fp, fn
    val_tokens = 0
    passes = atom_chunks(np.arange(n_lab), atom_chunk, atoms_per_pass)
    for p, chunks in enumerate(passes):
        val_tokens = 0
        label = desc if len(passes) == 1 else f"{desc} {p + 1}/{len(passes)}"
        for rows in iter_shard_rows(
            store,
            token_types=token_types,
            split="val",
            val_fraction=val_fraction,
            progress=progress,
            desc=label,
        ):
            present_np, judged_np = indicators(rows)
            present, judged = torch.from_numpy(present_np), torch.from_numpy(judged_np)
            val_tokens += rows.row_id.numel()
            for pos in chunks:
                c = len(pos)
                step = max(1, chunk_elements // c)
                base = torch.arange(c)[None, :] * n_bins
                for s in range(0, rows.row_id.numel(), step):
                    h = encoder(rows.activations[s : s + step], atom_ids[pos])
                    bins = torch.where(h > 0, 1 + torch.bucketize(h / scale_t[pos], edges), 0)
                    ok = judged[s : s + step][:, mod_t[pos]]
                    active = h > threshold
                    for v in range(n_var):
                        y = present[s : s + step][:, assign_t[pos, v]]
                        flat = ((base + bins) * 2 + y.long())[ok]
                        hist[pos.numpy(), ..., v] += (
                            torch.bincount(flat, minlength=c * n_bins * 2).view(c, n_bins, 2).numpy()
                        )
                        counts[pos.numpy(), 0, v] += (active & y & ok).sum(0).numpy()
                        counts[pos.numpy(), 1, v] += (active & ~y & ok).sum(0).numpy()
                        counts[pos.numpy(), 2, v] += (~active & y & ok).sum(0).numpy()
    if val_tokens == 0:
        raise AnalysisInputError(
            f"store {store.root}: no held-out rows (val_fraction {val_fraction} of "
            f"{store.manifest.num_documents} documents selects none); raise val_fraction"
        )
    auc = auc_from_hist(hist[:, :, 1, :].transpose(0, 2, 1), hist[:, :, 0, :].transpose(0, 2, 1))  # [n, V]
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    positives = hist[:, :, 1, 0].sum(1)
    per_atom = pd.DataFrame(
        {
            "atom": labels["atom"].to_numpy(),
            "auc": auc[:, 0],
            "precision": precision[:, 0],
            "recall": recall[:, 0],
            "val_positives": positives,
            "val_judged": positives + hist[:, :, 0, 0].sum(1),
        }
    )
    shuffled = pd.DataFrame(
        [
            {
                "atom": int(labels["atom"].iloc[i]),
                "shuffle": v,
                "label_kind": label_list[assign[v][i]][0],
                "label_value": label_list[assign[v][i]][1],
                "auc": auc[i, v],
                "precision": precision[i, v],
                "recall": recall[i, v],
            }
            for v in range(1, n_var)
            for i in range(n_lab)
        ]
    )
    if shuffles:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (no positives) stay NaN
            for col, arr in (("auc", auc), ("precision", precision), ("recall", recall)):
                per_atom[f"shuffled_{col}"] = np.nanmean(arr[:, 1:], axis=1)
    return Consistency(per_atom, shuffled, val_tokens)
