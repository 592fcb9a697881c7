"""The provenance report's per-sample figure: for every slot, the image with the slot's mask and the image
patches where its top atoms fired (boxes), its heatmap, its top atoms (act × grad and attention), and the
text tokens highlighted by how much they fed the slot."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from analysis.attribution.core import add_share_bars
from analysis.provenance.core import TokenInfo, heatmap_to_pixels

PALETTE = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999")
"""Box colours of the top atoms (rank 1 first)."""


def display_image(image: np.ndarray | None, size: tuple[int, int], max_side: int) -> tuple[np.ndarray, float]:
    """The image (grey when None) scaled so its longest side is at most `max_side`; returns (rgb, scale)."""
    h, w = size
    scale = min(1.0, max_side / max(h, w))
    dh, dw = max(1, round(h * scale)), max(1, round(w * scale))
    if image is None:
        return np.full((dh, dw, 3), 200, np.uint8), scale
    arr = np.asarray(image)[..., :3].astype(np.uint8)
    if arr.shape[:2] != (dh, dw):
        arr = np.asarray(Image.fromarray(arr).resize((dw, dh), Image.BILINEAR))
    return arr, scale


def _text_grid(tokens: TokenInfo, scores: pd.Series, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-image, non-pad tokens in reading order on a grid `width` wide: (z, text, hover)."""
    keep = [t for t in range(len(tokens.token_type)) if tokens.token_type[t] not in (0, 2)]
    rows = max(1, -(-len(keep) // width))
    z = np.full((rows, width), np.nan)
    text = np.full((rows, width), "", dtype=object)
    hover = np.full((rows, width), "", dtype=object)
    for i, t in enumerate(keep):
        r, c = divmod(i, width)
        s = tokens.text[t] if tokens.text is not None else f"#{t}"
        z[r, c] = float(scores.get(t, 0.0))
        text[r, c] = html.escape(s.strip() or "␣")
        hover[r, c] = html.escape(f"token {t}: {s!r}") + f"<br>score {z[r, c]:.4g}"
    return z, text, hover


def sample_figure(
    sample: int,
    heatmaps: np.ndarray,
    masks: np.ndarray,
    confidence: np.ndarray,
    atoms: pd.DataFrame,
    token_scores: pd.DataFrame,
    tokens: TokenInfo | None,
    image: np.ndarray | None,
    atom_boxes: dict[int, np.ndarray] | None = None,
    *,
    top: int = 10,
    boxed_atoms: int = 3,
    max_side: int = 192,
    text_width: int = 12,
) -> go.Figure:
    """One row per slot: image + mask + patch boxes | heatmap | top atoms | highlighted text tokens.

    Args:
        heatmaps / masks: [K, S, S] heatmap and mask logits of the sample (head frame).
        confidence: [K] slot probabilities.
        atoms: the sample's rows of `AttributionResult.atoms` (or the attention-only equivalent).
        token_scores: the sample's rows of `AttributionResult.tokens` with a `score` column to highlight by.
        tokens: the sample's token labels (boxes and text need them).
        image: the original RGB image.
        atom_boxes: atom → [n, 4] pixel boxes (x0, y0, x1, y1, original image) of the image tokens where it
            fired; the best `boxed_atoms` atoms of each slot are drawn.
    """
    k_slots = heatmaps.shape[0]
    size = (
        tokens.geometry.original_size
        if tokens is not None and tokens.geometry is not None
        else (image.shape[:2] if image is not None else heatmaps.shape[-2:])
    )
    img, scale = display_image(image, tuple(size), max_side)
    dh, dw = img.shape[:2]
    titles = []
    for k in range(k_slots):
        titles += [
            f"slot {k} (conf {confidence[k]:.2f}): mask + top-atom patches",
            "heatmap (sigmoid)",
            "top atoms",
            "text tokens → slot",
        ]
    fig = make_subplots(
        rows=k_slots,
        cols=4,
        subplot_titles=titles,
        horizontal_spacing=0.05,
        vertical_spacing=0.25 / max(k_slots, 1),
    )
    for k in range(k_slots):
        row = k + 1
        mask = heatmap_to_pixels(masks[k], (dh, dw)) > 0
        prob = 1 / (1 + np.exp(-heatmap_to_pixels(heatmaps[k], (dh, dw))))
        fig.add_trace(go.Image(z=img, hoverinfo="skip"), row=row, col=1)
        fig.add_trace(
            go.Heatmap(
                z=np.where(mask, 1.0, np.nan),
                colorscale=[[0, "#00e5ff"], [1, "#00e5ff"]],
                opacity=0.4,
                showscale=False,
                hoverinfo="skip",
            ),
            row=row,
            col=1,
        )
        fig.add_trace(go.Image(z=img, hoverinfo="skip", opacity=0.5), row=row, col=2)
        fig.add_trace(
            go.Heatmap(z=prob, colorscale="Magma", zmin=0, zmax=1, opacity=0.7, showscale=False),
            row=row,
            col=2,
        )
        t = atoms[atoms["slot"] == k].sort_values("rank").head(top)
        add_share_bars(fig, t, atoms.loc[atoms["slot"] == k, "attention"].abs().sum(), t["fired_at"], row, 3)
        if atom_boxes:
            _patch_boxes(fig, row, [int(a) for a in t["atom"].head(boxed_atoms)], atom_boxes, scale)
        if tokens is not None:
            ts = token_scores[token_scores["slot"] == k].set_index("token")["score"]
            z, text, hover = _text_grid(tokens, ts, text_width)
            fig.add_trace(
                go.Heatmap(
                    z=z,
                    text=text,
                    texttemplate="%{text}",
                    hovertext=hover,
                    hoverinfo="text",
                    colorscale="YlOrRd",
                    showscale=False,
                    xgap=1,
                    ygap=1,
                ),
                row=row,
                col=4,
            )
            fig.update_yaxes(autorange="reversed", showticklabels=False, row=row, col=4)
            fig.update_xaxes(showticklabels=False, row=row, col=4)
        for col in (1, 2):
            fig.update_yaxes(
                autorange="reversed",
                scaleanchor=f"x{(row - 1) * 4 + col}",
                showticklabels=False,
                row=row,
                col=col,
            )
            fig.update_xaxes(showticklabels=False, range=[-0.5, dw - 0.5], row=row, col=col)
    fig.update_layout(
        barmode="group",
        height=330 * k_slots + 60,
        width=1350,
        template="plotly_white",
        title=f"Sample {sample}: slot → atoms → tokens → pixels",
    )
    return fig


def _patch_boxes(
    fig: go.Figure, row: int, atoms: list[int], atom_boxes: dict[int, np.ndarray], scale: float
) -> None:
    """Rectangles over the image (column 1 of `row`) for the image tokens where each atom fired."""
    for i, atom in enumerate(atoms):
        color = PALETTE[i % len(PALETTE)]
        for x0, y0, x1, y1 in atom_boxes.get(atom, np.zeros((0, 4))):
            fig.add_shape(
                type="rect",
                x0=x0 * scale - 0.5,
                y0=y0 * scale - 0.5,
                x1=x1 * scale - 0.5,
                y1=y1 * scale - 0.5,
                line={"color": color, "width": 2},
                name=f"atom {atom}",
                row=row,
                col=1,
            )
