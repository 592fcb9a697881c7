"""Tables of `analysis.attribution.core`: per (sample, slot, atom) and per (sample, slot, token)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from analysis.attribution.head_inputs import TokenInfo
from sae.token_types import TokenType
from segcompass.head.outputs import HeadOutput


def token_columns(tokens: TokenInfo, positions: np.ndarray) -> dict[str, Any]:
    """Per position: token_type (name), text, image row/col (−1 if not an image token) and, with a
    geometry, the pixel box x0, y0, x1, y1 in the original image (NaN for non-image tokens)."""
    if len(positions) and int(positions.max()) >= len(tokens.token_type):
        raise ValueError(
            f"token position {int(positions.max())} is beyond the {len(tokens.token_type)} labelled positions "
            "of the sample's TokenInfo (token labels from another sequence?)"
        )
    rc = tokens.image_rc[positions].reshape(-1, 2)
    cols: dict[str, Any] = {
        "token_type": [TokenType(int(t)).name.lower() for t in tokens.token_type[positions]],
        "text": [tokens.text[p] for p in positions] if tokens.text is not None else [""] * len(positions),
        "row": rc[:, 0],
        "col": rc[:, 1],
    }
    if tokens.geometry is not None:
        boxes = tokens.geometry.token_boxes()
        idx = np.maximum(rc[:, 0] * tokens.geometry.grid[1] + rc[:, 1], 0)
        is_img = rc[:, 0] >= 0
        for j, name in enumerate(("x0", "y0", "x1", "y1")):
            cols[name] = np.where(is_img, boxes[idx, j], np.nan)
    return cols


def _label(pos: int, info: dict[str, Any] | None, i: int) -> str:
    if info is None:
        return str(pos)
    kind = info["token_type"][i]
    if info["row"][i] >= 0:
        return f"{pos}:{kind}({info['row'][i]},{info['col'][i]})"
    text = info["text"][i]
    return f"{pos}:{kind} {text.strip()!r}" if text and text.strip() else f"{pos}:{kind}"


def _entries(ref: HeadOutput) -> pd.DataFrame:
    sup = ref.support.to("cpu")
    return pd.DataFrame(
        {
            "sample": sup.batch_idx.numpy(),
            "token": sup.token_idx.numpy(),
            "atom": sup.atom_idx.numpy(),
            "value": sup.values.float().numpy(),
        }
    )


def _fired(entries: pd.DataFrame, tokens: Sequence[TokenInfo] | None, max_listed: int) -> pd.DataFrame:
    """Per (sample, atom): n_entries, n_tokens, value_sum and fired_at (largest |value| first)."""
    labels = np.empty(len(entries), dtype=object)
    for b, idx in entries.groupby("sample").indices.items():
        pos = entries["token"].to_numpy()[idx]
        info = token_columns(tokens[b], pos) if tokens is not None else None
        labels[idx] = [_label(int(p), info, i) for i, p in enumerate(pos)]
    e = entries.assign(label=labels, mag=entries["value"].abs())
    e = e.sort_values(["sample", "atom", "mag"], ascending=[True, True, False], kind="stable")

    def listing(s: pd.Series) -> str:
        head = ", ".join(s.iloc[:max_listed])
        return head + (f", … +{len(s) - max_listed}" if len(s) > max_listed else "")

    return (
        e.groupby(["sample", "atom"], sort=False)
        .agg(
            n_entries=("value", "size"),
            n_tokens=("token", "nunique"),
            value_sum=("value", "sum"),
            fired_at=("label", listing),
        )
        .reset_index()
    )


def _attention(ref: HeadOutput, slots: Sequence[int], layer: int) -> pd.DataFrame | None:
    rows = []
    for b, prov in enumerate(ref.provenance.samples):
        if prov.slot_attention is None:
            continue
        for k in slots:
            atoms, scores = prov.atom_scores(k, layer)
            rows.append(
                pd.DataFrame({"sample": b, "slot": k, "atom": atoms.numpy(), "attention": scores.numpy()})
            )
    return pd.concat(rows, ignore_index=True) if rows else None


def _rank(df: pd.DataFrame, key: pd.Series, name: str) -> None:
    order = df.assign(_k=key).sort_values(
        ["sample", "slot", "_k", "atom"], ascending=[True, True, False, True], kind="stable"
    )
    df.loc[order.index, name] = order.groupby(["sample", "slot"]).cumcount().to_numpy() + 1


def atom_table(
    ref: HeadOutput,
    scores: Tensor,
    slots: Sequence[int],
    inputs: Any,
    layer: int,
    rank_by: str,
    max_listed: int,
) -> pd.DataFrame:
    """The per-atom attribution table (see `AttributionResult.atoms`)."""
    entries = _entries(ref)
    sc = scores.detach().float().cpu().numpy()
    frames = [
        entries.assign(slot=k, act_grad=sc[i])
        .groupby(["sample", "slot", "atom"], sort=False)["act_grad"]
        .sum()
        for i, k in enumerate(slots)
    ]
    df = pd.concat(frames).reset_index()
    df = df.merge(_fired(entries, inputs.tokens, max_listed), on=["sample", "atom"], how="left")
    att = _attention(ref, slots, layer)
    df = (
        df.merge(att, on=["sample", "slot", "atom"], how="left")
        if att is not None
        else df.assign(attention=np.nan)
    )
    if rank_by not in ("abs", "signed"):
        raise ValueError(f"rank_by must be 'abs' or 'signed', got {rank_by!r}")
    key = df["act_grad"].abs() if rank_by == "abs" else df["act_grad"]
    _rank(df, key, "rank")
    _rank(df, df["attention"].fillna(-np.inf), "attention_rank")
    total = df.groupby(["sample", "slot"])["act_grad"].transform(lambda s: s.abs().sum())
    df["share"] = np.where(total > 0, df["act_grad"] / total.where(total > 0, 1.0), np.nan)
    df["sample_id"] = [inputs.sample_id(int(b)) for b in df["sample"]]
    df = df.astype({"rank": "int64", "attention_rank": "int64"})
    cols = ["sample", "sample_id", "slot", "rank", "atom", "act_grad", "share", "attention", "attention_rank",
            "n_entries", "n_tokens", "value_sum", "fired_at"]  # fmt: skip
    return df.sort_values(["sample", "slot", "rank"], ignore_index=True)[cols]


def token_table(ref: HeadOutput, scores: Tensor, slots: Sequence[int], inputs: Any) -> pd.DataFrame:
    """The per-token attribution table (see `AttributionResult.tokens`)."""
    entries = _entries(ref)
    sc = scores.detach().float().cpu().numpy()
    frames = []
    for i, k in enumerate(slots):
        g = (
            entries.assign(act_grad=sc[i], abs_act_grad=np.abs(sc[i]))
            .groupby(["sample", "token"], sort=True)
            .agg(
                act_grad=("act_grad", "sum"),
                abs_act_grad=("abs_act_grad", "sum"),
                n_atoms=("atom", "nunique"),
            )
            .reset_index()
        )
        g.insert(1, "slot", k)
        frames.append(g)
    df = pd.concat(frames, ignore_index=True)
    if inputs.tokens is not None:
        parts = []
        for b, sub in df.groupby("sample", sort=False):
            cols = token_columns(inputs.tokens[int(b)], sub["token"].to_numpy())
            parts.append(sub.assign(**cols))
        df = pd.concat(parts, ignore_index=True)
    df.insert(1, "sample_id", [inputs.sample_id(int(b)) for b in df["sample"]])
    return df.sort_values(["sample", "slot", "token"], ignore_index=True)
