"""Slot provenance: slot → atoms → source tokens (text spans, image patches) → pixels, from the head's record.

The head's `SampleProvenance` holds the sparse support (token, atom, value) and each aggregator slot's
attention over the concept tokens. An entry's contribution to slot k is attention_k(token) × |value| —
the same score as `SampleProvenance.atom_scores`; summed per atom it ranks the atoms, summed per token it
shows which text tokens and image patches fed the slot, and through `ImageGeometry` the patches become
pixel regions to set beside the slot's heatmap (mapped back from SAM's 256² letterbox).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from analysis.attribution.head_inputs import TokenInfo
from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType


def _contributions(prov: Any, layer: int) -> np.ndarray:
    """[K, E] attention of each slot on each entry's token × |value|."""
    return (prov.entry_attention(layer) * prov.values.abs()).float().numpy()


def entry_table(prov: Any, tokens: TokenInfo | None = None, *, layer: int = -1) -> pd.DataFrame:
    """One row per (slot, support entry): slot, atom, token, value, attention, contribution, and — with
    `tokens` — its token type, text, image (row, col) and pixel box (x0, y0, x1, y1) in the original image."""
    att = prov.entry_attention(layer).float().numpy()
    contrib = _contributions(prov, layer)
    k, e = contrib.shape
    token = prov.token_idx.numpy()
    df = pd.DataFrame(
        {
            "slot": np.repeat(np.arange(k), e),
            "atom": np.tile(prov.atom_idx.numpy(), k),
            "token": np.tile(token, k),
            "value": np.tile(prov.values.float().numpy(), k),
            "attention": att.ravel(),
            "contribution": contrib.ravel(),
        }
    )
    if tokens is not None:
        types = tokens.token_type[df["token"]]
        df["token_type"] = [TokenType(int(t)).name.lower() for t in types]
        df["text"] = [tokens.text[t] for t in df["token"]] if tokens.text is not None else ""
        rc = tokens.image_rc[df["token"]]
        df["row"], df["col"] = rc[:, 0], rc[:, 1]
        if tokens.geometry is not None:
            boxes = tokens.geometry.token_boxes()
            idx = rc[:, 0] * tokens.geometry.grid[1] + rc[:, 1]
            is_img = rc[:, 0] >= 0
            for j, name in enumerate(("x0", "y0", "x1", "y1")):
                df[name] = np.where(is_img, boxes[np.maximum(idx, 0), j], np.nan)
    return df


def slot_atoms(prov: Any, *, layer: int = -1, top: int = 10) -> pd.DataFrame:
    """Per slot, its `top` atoms by Σ attention × |value|: slot, rank, atom, score, share (of the slot's total),
    entries, tokens (distinct positions where the atom is in the support)."""
    contrib = _contributions(prov, layer)
    atoms = prov.atom_idx.numpy()
    tokens = prov.token_idx.numpy()
    rows = []
    for k in range(contrib.shape[0]):
        df = pd.DataFrame({"atom": atoms, "token": tokens, "c": contrib[k]})
        g = df.groupby("atom").agg(score=("c", "sum"), entries=("c", "size"), tokens=("token", "nunique"))
        g = g.sort_values("score", ascending=False, kind="stable").head(top).reset_index()
        total = contrib[k].sum()
        g.insert(0, "rank", np.arange(1, len(g) + 1))
        g.insert(0, "slot", k)
        g["share"] = g["score"] / total if total > 0 else np.nan
        rows.append(g)
    return pd.concat(rows, ignore_index=True)[["slot", "rank", "atom", "score", "share", "entries", "tokens"]]


def token_contributions(
    prov: Any, slot: int, tokens: TokenInfo | None = None, *, layer: int = -1
) -> pd.DataFrame:
    """The tokens that fed `slot`: token, contribution (Σ over its entries), atoms, and its type/text/(row, col)."""
    df = entry_table(prov, tokens, layer=layer)
    df = df[df["slot"] == slot]
    keys = ["token"] + [c for c in ("token_type", "text", "row", "col") if c in df]
    out = df.groupby(keys, sort=False).agg(contribution=("contribution", "sum"), atoms=("atom", "nunique"))
    return out.reset_index().sort_values("contribution", ascending=False, ignore_index=True)


def patch_grid(prov: Any, slot: int, tokens: TokenInfo, *, layer: int = -1) -> np.ndarray:
    """[rows, cols] contribution of each image patch to `slot`."""
    if tokens.geometry is None:
        raise ValueError("the sample has no image geometry")
    rows, cols = tokens.geometry.grid
    grid = np.zeros(rows * cols)
    contrib = _contributions(prov, layer)[slot]
    rc = tokens.image_rc[prov.token_idx.numpy()]
    img = rc[:, 0] >= 0
    np.add.at(grid, rc[img, 0] * cols + rc[img, 1], contrib[img])
    return grid.reshape(rows, cols)


def pixel_map(grid: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """[H, W] of the original image: each pixel gets the value of the patch that covers it (0 if none)."""
    imap = geometry.token_index_map()
    flat = np.concatenate([grid.ravel(), [0.0]])
    return flat[np.where(imap >= 0, imap, len(flat) - 1)]


def heatmap_to_pixels(heatmap: torch.Tensor | np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """A slot heatmap on SAM's S×S letterbox (longest side → S, padded bottom/right) → [H, W] of the image."""
    hm = torch.as_tensor(heatmap, dtype=torch.float32)
    s = hm.shape[-1]
    h, w = original_size
    scale = s / max(h, w)
    crop = hm[: int(h * scale + 0.5), : int(w * scale + 0.5)]
    return F.interpolate(crop[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def provenance_figure(
    prov: Any,
    slot: int,
    tokens: TokenInfo,
    *,
    image: np.ndarray | None = None,
    heatmap: torch.Tensor | np.ndarray | None = None,
    layer: int = -1,
    top: int = 10,
) -> go.Figure:
    """Four panels for one slot: its top atoms; the image with each patch's contribution; the slot heatmap
    in image pixels (sigmoid); the text tokens' contributions."""
    fig = make_subplots(
        rows=1,
        cols=4,
        subplot_titles=(
            f"slot {slot}: top atoms",
            "image patches → slot",
            "slot heatmap (pixels)",
            "text tokens → slot",
        ),
    )
    atoms = slot_atoms(prov, layer=layer, top=top)
    atoms = atoms[atoms["slot"] == slot]
    fig.add_trace(
        go.Bar(x=[f"atom {a}" for a in atoms["atom"]], y=atoms["score"], name="atom score"), row=1, col=1
    )
    if tokens.geometry is not None:
        grid = pixel_map(patch_grid(prov, slot, tokens, layer=layer), tokens.geometry)
        if image is not None:
            fig.add_trace(go.Image(z=np.asarray(image)[..., :3]), row=1, col=2)
        fig.add_trace(
            go.Heatmap(
                z=grid,
                colorscale="Viridis",
                opacity=0.55 if image is not None else 1.0,
                showscale=False,
                name="patch contribution",
            ),
            row=1,
            col=2,
        )
        if heatmap is not None:
            prob = 1 / (1 + np.exp(-heatmap_to_pixels(heatmap, tokens.geometry.original_size)))
            fig.add_trace(
                go.Heatmap(z=prob, colorscale="Magma", zmin=0, zmax=1, showscale=False), row=1, col=3
            )
        for col in (2, 3):
            fig.update_yaxes(autorange="reversed", scaleanchor=f"x{col}", row=1, col=col)
    text = token_contributions(prov, slot, tokens, layer=layer)
    text = text[text["token_type"] != "image"].sort_values("token")
    labels = [
        f"{t}:{s!r}" if s else f"{t} ({ty})"
        for t, s, ty in zip(text["token"], text["text"], text["token_type"], strict=True)
    ]
    fig.add_trace(go.Bar(x=labels, y=text["contribution"], name="token contribution"), row=1, col=4)
    fig.update_layout(
        height=420, width=1500, showlegend=False, template="plotly_white", title=f"Provenance of slot {slot}"
    )
    return fig
