"""The slot-provenance report: per sample, slot heatmap/mask → top atoms (act × grad and attention) →
source tokens (text spans, image patches as boxes) → pixels; the causal check; tables as CSV + Parquet.

`provenance_report(records, out_dir)` takes already-computed head inputs/outputs (and optionally their
attribution and causal check), so it runs without a trained model; `segcompass-analyze provenance`
(`analysis.provenance.command`) computes the records from a checkpoint and calls it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.attribution.causal import CausalResult
from analysis.attribution.causal_summary import causal_figure, causal_summary
from analysis.attribution.core import AttributionResult
from analysis.attribution.head_inputs import HeadInputs
from analysis.provenance.core import TokenInfo, slot_atoms, token_contributions
from analysis.provenance.figures import sample_figure
from analysis.provenance.verdict import provenance_verdict
from analysis.report.html import ReportFiles, Section, write_report
from sae.token_types import TokenType
from segcompass.head.outputs import HeadOutput

logger = logging.getLogger(__name__)

ATOM_COLUMNS = [
    "slot",
    "rank",
    "atom",
    "act_grad",
    "share",
    "attention",
    "attention_rank",
    "n_entries",
    "fired_at",
]
"""Columns of the per-sample atom table shown in the page."""


@dataclass
class ProvenanceRecord:
    """One batch of the report."""

    inputs: HeadInputs
    """The head's inputs, with `tokens` (token labels) and `images` for display, and `sample_ids`."""
    output: HeadOutput
    """The head's output on `inputs` (e.g. `AttributionResult.reference`)."""
    attribution: AttributionResult | None = None
    """Act × grad attribution of this batch (None: atoms ranked by the aggregator's attention only)."""
    causal: CausalResult | None = None
    """The causal check of this batch, when run."""


def _attention_atoms(output: HeadOutput, b: int, layer: int) -> pd.DataFrame:
    """Attention-only atom table of sample b, in the columns of `AttributionResult.atoms`."""
    t = slot_atoms(output.provenance.samples[b], layer=layer, top=1 << 30)
    return pd.DataFrame(
        {
            "sample": b,
            "slot": t["slot"],
            "rank": t["rank"],
            "atom": t["atom"],
            "act_grad": np.nan,
            "share": t["share"],
            "attention": t["score"],
            "attention_rank": t["rank"],
            "n_entries": t["entries"],
            "n_tokens": t["tokens"],
            "fired_at": "",
        }
    )


def _token_scores(record: ProvenanceRecord, b: int, layer: int) -> pd.DataFrame:
    """Per (slot, token) highlight score of sample b: Σ|act × grad|, else attention × |value|."""
    att = record.attribution
    if att is not None:
        t = att.tokens[att.tokens["sample"] == b]
        return t.assign(score=t["abs_act_grad"])[["slot", "token", "score"]]
    prov = record.output.provenance.samples[b]
    frames = [
        token_contributions(prov, k, None, layer=layer).assign(slot=k)
        for k in range(prov.slot_attention.shape[1])
    ]
    return pd.concat(frames).rename(columns={"contribution": "score"})[["slot", "token", "score"]]


def _atom_boxes(output: HeadOutput, b: int, tokens: TokenInfo | None) -> dict[int, np.ndarray]:
    """atom → [n, 4] original-pixel boxes of the image tokens where it is in sample b's support."""
    if tokens is None or tokens.geometry is None:
        return {}
    prov = output.provenance.samples[b]
    pos = prov.token_idx.numpy()
    rc = tokens.image_rc[pos]
    img = rc[:, 0] >= 0
    boxes = tokens.geometry.token_boxes()[rc[img, 0] * tokens.geometry.grid[1] + rc[img, 1]]
    atoms = prov.atom_idx.numpy()[img]
    return {int(a): boxes[atoms == a] for a in np.unique(atoms)}


def _describe(tokens: TokenInfo | None) -> str:
    """The sample's instruction and reasoning text, when the token labels carry text."""
    if tokens is None or tokens.text is None:
        return ""
    parts = []
    for kind in (TokenType.INSTRUCTION, TokenType.COT):
        text = "".join(tokens.text[i] for i in np.flatnonzero(tokens.token_type == int(kind))).strip()
        if text:
            parts.append(f"{kind.name.lower()}: {text}")
    return " | ".join(parts)


def _slot_rows(record: ProvenanceRecord, b: int, atoms: pd.DataFrame, top: int) -> list[dict[str, Any]]:
    out = record.output
    rows = []
    for k in range(out.slot_masks.shape[1]):
        t = atoms[atoms["slot"] == k]
        by_att = t.sort_values("attention_rank")["atom"].head(top)
        rows.append(
            {
                "slot": k,
                "confidence": float(out.slot_confidence[b, k]),
                "confident": bool(out.confident[b, k]),
                "mask_fraction": float((out.slot_masks[b, k] > 0).float().mean()),
                "top_atoms_act_grad": " ".join(map(str, t.sort_values("rank")["atom"].head(top))),
                "top_atoms_attention": " ".join(map(str, by_att)),
            }
        )
    return rows


SAMPLES_TEXT = (
    "One figure per sample, one row per slot: the image with the slot's mask (cyan) and boxes on the image "
    "patches where the slot's top 3 atoms fired (red, blue, green = rank 1, 2, 3); the slot's heatmap; its "
    "top atoms by act × grad (through the codebook path) beside the aggregator's attention; and the text "
    "tokens shaded by how much they fed the slot (Σ|act × grad|). The table under each figure lists the "
    "slot's top atoms."
)
SLOTS_TEXT = (
    "Per sample and slot: confidence, mask area, and its top atoms by act × grad and by the aggregator's "
    "attention."
)
CAUSAL_TEXT = (
    "Each slot's top-attributed atoms (n of them) are removed from the support and the head re-run; the "
    "same with n random atoms of the support (several draws). Larger drops mean the slot changed more."
)


def provenance_report(
    records: Sequence[ProvenanceRecord],
    out_dir: str | os.PathLike,
    *,
    name: str = "provenance",
    title: str = "SegCompass slot provenance",
    top: int = 10,
    attention_layer: int = -1,
    max_side: int = 192,
    metadata: dict[str, Any] | None = None,
) -> ReportFiles:
    """Write `<out_dir>/<name>.html` and its tables (atoms, tokens, slots, causal, causal_summary).

    Samples are numbered across records in order; `sample_id` keeps each sample's own id.
    """
    if not records:
        raise ValueError("provenance_report needs at least one record")
    sections: list[Section] = []
    atoms_all, tokens_all, slots_all, causal_all = [], [], [], []
    offset = 0
    for rec in records:
        inp, out = rec.inputs, rec.output
        if out.slot_masks.shape[0] != inp.batch_size:
            raise ValueError(
                f"a record's output has {out.slot_masks.shape[0]} samples, its inputs {inp.batch_size}"
            )
        for b in range(inp.batch_size):
            tokens = inp.tokens[b] if inp.tokens is not None else None
            image = inp.images[b] if inp.images is not None else None
            if rec.attribution is not None:
                atoms = rec.attribution.atoms[rec.attribution.atoms["sample"] == b]
            else:
                atoms = _attention_atoms(out, b, attention_layer)
            scores = _token_scores(rec, b, attention_layer)
            fig = sample_figure(
                offset + b,
                out.slot_heatmaps[b].detach().float().cpu().numpy(),
                out.slot_masks[b].detach().float().cpu().numpy(),
                out.slot_confidence[b].detach().float().cpu().numpy(),
                atoms,
                scores,
                tokens,
                image,
                _atom_boxes(out, b, tokens),
                top=top,
                max_side=max_side,
            )
            shown = atoms.sort_values(["slot", "rank"]).groupby("slot").head(top)[ATOM_COLUMNS]
            sid = inp.sample_id(b)
            sections.append(
                Section(f"Sample {offset + b}: {sid}", _describe(tokens), fig, shown, max_rows=4 * top)
            )
            ids = {"sample": offset + b, "sample_id": sid}
            atoms_all.append(atoms.assign(**ids))
            slots_all += [{**ids, **row} for row in _slot_rows(rec, b, atoms, top)]
            if rec.attribution is not None:
                t = rec.attribution.tokens
                tokens_all.append(t[t["sample"] == b].assign(**ids))
        if rec.causal is not None:
            causal_all.append(rec.causal.table.assign(sample=rec.causal.table["sample"] + offset))
        offset += inp.batch_size
    tables = {"atoms": pd.concat(atoms_all, ignore_index=True), "slots": pd.DataFrame(slots_all)}
    if tokens_all:
        tables["tokens"] = pd.concat(tokens_all, ignore_index=True)
    sections.insert(0, Section("How to read the samples", SAMPLES_TEXT))
    summary = None
    if causal_all:
        table = pd.concat(causal_all, ignore_index=True)
        summary = causal_summary(table)
        tables["causal"], tables["causal_summary"] = table, summary
        sections.insert(
            0,
            Section(
                "Causal check: removing top-attributed vs random atoms",
                CAUSAL_TEXT,
                causal_figure(summary),
            ),
        )
    sections.append(Section("Slots", SLOTS_TEXT, table=tables["slots"], max_rows=200))
    if summary is not None:
        sections.append(Section("Causal check per number of atoms removed", table=summary))
    logger.info("provenance report: %d samples, %d sections", offset, len(sections))
    verdict = provenance_verdict(summary)
    return write_report(out_dir, name, title, sections, tables, metadata=metadata, verdict=verdict)
