"""Atom cards for the HTML report, as SAE feature dashboards show them: a header with the atom's label and
its held-out score, an activation histogram (plotly), the top image patches as crops and the top text
contexts with the firing token highlighted by its activation.

`atom_dashboard` returns the card's HTML and its histogram figure; the report places them side by side
(`Section(layout="side")`). The notebook's one-figure card is `cards.atom_card`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.atoms.cards import ImageSource, atom_examples, crop_tiles, png_uri
from analysis.atoms.examples import MARK
from analysis.atoms.naming import NamingResult

CARD_STYLE = """<style>
.atom-card .chips { display: flex; flex-wrap: wrap; gap: 0.4em; margin: 0.2em 0 0.8em; }
.atom-card .chip { background: #eef2f8; border-radius: 1em; padding: 0.15em 0.8em; font-size: 0.9em; }
.atom-card .chip.label { background: #1f4e9c; color: #fff; font-weight: 600; }
.atom-card .chip.good { background: #d8f0dc; } .atom-card .chip.bad { background: #f8e0dc; }
.atom-card h4 { margin: 0.6em 0 0.3em; font-size: 0.95em; color: #444; }
.atom-card .crops { display: flex; flex-wrap: wrap; gap: 6px; }
.atom-card figure { margin: 0; text-align: center; font-size: 0.75em; color: #444; }
.atom-card figure img { display: block; border: 1px solid #ccc; image-rendering: pixelated; }
.atom-card table.contexts { border-collapse: collapse; font-size: 0.85em; }
.atom-card table.contexts td { padding: 1px 8px 1px 0; vertical-align: top; }
.atom-card table.contexts td.act { text-align: right; color: #555; font-variant-numeric: tabular-nums; }
.atom-card table.contexts td.ctx { font-family: ui-monospace, monospace; white-space: pre; }
.atom-card mark { border-radius: 3px; padding: 0 1px; color: #000; }
.atom-card .note { color: #777; font-size: 0.85em; }
</style>"""
"""The cards' CSS (added once, with the first card)."""


@dataclass
class AtomCard:
    """One atom's card."""

    atom: int
    """The atom's index."""
    title: str
    """"Atom 17 — red" (the label, or "no label")."""
    html: str
    """The card's body: header chips, image crops, text contexts (trusted HTML built here)."""
    histogram: go.Figure
    """The activation histogram."""


def _chip(text: str, kind: str = "") -> str:
    return f'<span class="chip {kind}">{html.escape(text)}</span>'


def _fmt(v, spec: str) -> str | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _header(info: pd.Series) -> str:
    labelled = isinstance(info["label"], str)
    chips = [_chip(info["label"] if labelled else "no label", "label")]
    if labelled:
        chips.append(_chip(f"{info['label_kind']} label · {info['modality']} atom"))
        auc, shuffled = _fmt(info.get("auc"), ".3f"), _fmt(info.get("shuffled_auc"), ".3f")
        if auc is not None:
            good = "good" if info["auc"] >= 0.75 else "bad" if info["auc"] < 0.6 else ""
            vs = f" (shuffled labels {shuffled})" if shuffled is not None else ""
            chips.append(_chip(f"held-out AUC {auc}{vs}", good))
        else:
            chips.append(_chip("held-out AUC n/a (no held-out positives)"))
        for key, name in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("purity", "purity of top examples"),
        ):
            v = _fmt(info.get(key), ".2f")
            if v is not None:
                chips.append(_chip(f"{name} {v}"))
    chips.append(_chip(f"fires on {info['frequency']:.2%} of tokens"))
    for key, name in (("max_act", "max"), ("mean_act", "mean when firing")):
        v = _fmt(info.get(key), ".3g")
        if v is not None:
            chips.append(_chip(f"{name} {v}"))
    return f'<div class="chips">{"".join(chips)}</div>'


def _crops(patches: pd.DataFrame, images: ImageSource | None, size: int) -> str:
    if patches.empty:
        return ""
    tiles, message = crop_tiles(patches, images, size=size, margin=1.0)
    head = (
        '<h4>Top image patches <span class="note">(red box: the token\'s cell; crop: 3× its side)</span></h4>'
    )
    if all(t is None for t in tiles):
        where = ", ".join(f"doc {p.doc_id} ({p.image_row},{p.image_col})" for p in patches.itertuples())
        return f'{head}<p class="note">{html.escape(message)} — patches at {html.escape(where)}.</p>'
    figs = []
    for tile, p in zip(tiles, patches.itertuples(), strict=True):
        img = (
            f'<img src="{png_uri(tile)}" width="{size}" height="{size}" alt="patch">'
            if tile is not None
            else f'<div style="width:{size}px;height:{size}px;background:#eee"></div>'
        )
        figs.append(
            f"<figure>{img}<figcaption><b>{p.activation:.3g}</b><br>doc {p.doc_id} "
            f"({p.image_row},{p.image_col})</figcaption></figure>"
        )
    note = f'<p class="note">{html.escape(message)}</p>' if message else ""
    return f'{head}<div class="crops">{"".join(figs)}</div>{note}'


def _highlight(context: str, strength: float) -> str:
    """The context with the example token (between `MARK`s) highlighted; `strength` in [0, 1]."""
    text = html.escape(context.replace("\r", "").replace("\n", "↵"))
    start, end = html.escape(MARK[0]), html.escape(MARK[1])
    alpha = 0.15 + 0.75 * max(0.0, min(1.0, strength))
    return text.replace(start, f'<mark style="background: rgba(255, 128, 0, {alpha:.2f})">', 1).replace(
        end, "</mark>", 1
    )


def _contexts(texts: pd.DataFrame, top: float) -> str:
    if texts.empty:
        return ""
    rows = [
        f'<tr><td class="act">{t.activation:.3g}</td><td class="act">doc {t.doc_id}</td>'
        f'<td class="ctx">{_highlight(t.context, t.activation / top if top > 0 else 1.0)}</td></tr>'
        for t in texts.itertuples()
    ]
    return f'<h4>Top text contexts</h4><table class="contexts">{"".join(rows)}</table>'


def activation_histogram(result: NamingResult, atom: int, lowest_example: float | None = None) -> go.Figure:
    """The atom's activations where it fires (log-spaced bins), with the lowest top example marked."""
    i = int(np.flatnonzero(result.table["atom"].to_numpy() == atom)[0])
    counts, edges = result.hist[i], result.hist_edges
    inner = counts[1:-1]
    fig = go.Figure()
    nz = np.flatnonzero(inner)
    x_range = None
    if nz.size:
        sl = slice(nz[0], nz[-1] + 1)
        x_range = [np.log10(edges[nz[0]]) - 0.05, np.log10(edges[nz[-1] + 1]) + 0.05]
        centres = np.sqrt(edges[:-1] * edges[1:])[sl]
        fig.add_trace(
            go.Bar(
                x=centres,
                y=inner[sl],
                width=np.diff(edges)[sl],
                marker_color="#4c72b0",
                hovertemplate="activation ≈ %{x:.3g}<br>%{y} tokens<extra></extra>",
            )
        )
        if lowest_example is not None and lowest_example > 0:
            fig.add_vline(x=lowest_example, line_dash="dot", line_color="#d62728")
            fig.add_annotation(  # on a log axis an annotation's x is log10 (add_vline's own misplaces it)
                x=np.log10(lowest_example),
                y=1,
                yref="paper",
                xanchor="left",
                yanchor="top",
                showarrow=False,
                text=" top examples →",
                font={"size": 10, "color": "#d62728"},
            )
    else:
        fig.add_annotation(text="never fires", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    outside = []
    if counts[0]:
        outside.append(f"{int(counts[0])} below {edges[0]:.0e}")
    if counts[-1]:
        outside.append(f"{int(counts[-1])} above {edges[-1]:.0e}")
    note = f"<br><sup>not shown: {', '.join(outside)}</sup>" if outside else ""
    fig.update_layout(
        xaxis={"type": "log", "title": "activation when firing (log scale)" + note, "range": x_range},
        yaxis={"title": "tokens"},
        height=300,
        width=420,
        margin={"l": 50, "r": 10, "t": 30, "b": 50},
        template="plotly_white",
        showlegend=False,
        bargap=0,
    )
    return fig


def atom_dashboard(
    result: NamingResult,
    atom: int,
    images: ImageSource | None = None,
    *,
    n_patches: int = 8,
    n_contexts: int = 10,
    crop_size: int = 96,
) -> AtomCard:
    """The card of `atom` in `result` (a `NamingResult`): header, histogram, crops, contexts."""
    info, ex, patches, texts = atom_examples(result, atom, n_patches, n_contexts)
    top = float(ex["activation"].max()) if len(ex) else 0.0
    body = _header(info) + _crops(patches, images, crop_size) + _contexts(texts, top)
    if ex.empty:
        body += '<p class="note">No example above the threshold.</p>'
    label = info["label"] if isinstance(info["label"], str) else "no label"
    lowest = float(ex["activation"].min()) if len(ex) else None
    return AtomCard(
        atom,
        f"Atom {atom} — {label}",
        f'<div class="atom-card">{body}</div>',
        activation_histogram(result, atom, lowest),
    )
