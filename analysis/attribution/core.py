"""Atom attribution: which SAE atoms drove each slot — activation × gradient through the codebook path,
beside the aggregator's attention score.

For one head forward and slot k with objective O_k (see `AttributionConfig.objective`), every support entry
e = (token t, atom j, value h_e) gets act × grad = h_e · ∂O_k/∂h_e; the values are cut from the hook states
(`ValueTap`), so the gradient runs only through the codebook → aggregator → fusion → slot mapper → mask
decoder. Summed over an atom's entries it is the first-order change of O_k when that atom's values are
scaled: O_k(h with atom j × (1 + ε)) − O_k(h) = ε · Σ_{e ∈ j} h_e ∂O_k/∂h_e + O(ε²). Summed over a token's
entries it is the token's share. The attention score is `SampleProvenance.atom_scores` (Σ attention × |h|).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor, nn

from analysis.attribution.head_inputs import HeadInputs
from analysis.attribution.support_filter import ValueTap
from analysis.attribution.tables import atom_table, token_table
from segcompass.head.outputs import HeadOutput

logger = logging.getLogger(__name__)

Objective = Literal["mask", "heatmap", "confidence"]
RankBy = Literal["abs", "signed"]


@dataclass
class AttributionConfig:
    """What is attributed and how atoms are ranked."""

    objective: Objective = "mask"
    """The slot objective O_k: 'mask' = Σ of the slot's mask logits over its predicted mask region (logit >
    `mask_threshold` in this forward, held fixed; the whole map when the region is empty); 'heatmap' = Σ of
    its heatmap logits over the whole map; 'confidence' = its confidence logit."""
    mask_threshold: float = 0.0
    """Mask-logit threshold of the predicted region (0 = probability 0.5)."""
    rank_by: RankBy = "abs"
    """Rank atoms by |act × grad| ('abs': whatever moved the objective, either way) or by its signed value
    ('signed': what pushed the objective up)."""
    attention_layer: int = -1
    """Aggregator layer whose attention gives the attention score."""
    slots: tuple[int, ...] | None = None
    """Slots to attribute (None: all K)."""
    max_listed_tokens: int = 8
    """Tokens listed per atom in the `fired_at` column (largest |value| first)."""


def check_slots(slots: Sequence[int] | None, num_slots: int) -> list[int]:
    """`slots` (all when None) validated against the head's K."""
    chosen = list(range(num_slots)) if slots is None else [int(s) for s in slots]
    bad = [s for s in chosen if not 0 <= s < num_slots]
    if bad:
        raise ValueError(
            f"slot index(es) {bad} out of range: the head has {num_slots} slots (0..{num_slots - 1})"
        )
    if not chosen:
        raise ValueError("no slot selected")
    return chosen


def slot_regions(out: HeadOutput, threshold: float = 0.0) -> Tensor:
    """[B, K, S, S] bool, detached: each slot's predicted mask region (mask logit > threshold)."""
    return out.slot_masks.detach() > threshold


def slot_objectives(out: HeadOutput, objective: Objective, regions: Tensor | None = None) -> Tensor:
    """[B, K] slot objectives of `out` (differentiable); `regions` [B, K, S, S] fixes the 'mask' region."""
    if objective == "mask":
        if regions is None:
            raise ValueError("the 'mask' objective needs the regions (slot_regions of the reference forward)")
        empty = ~regions.flatten(2).any(-1)  # [B, K]
        weight = (regions | empty[..., None, None]).to(out.slot_masks.dtype)
        return (out.slot_masks * weight).sum((-2, -1))
    if objective == "heatmap":
        return out.slot_heatmaps.sum((-2, -1))
    if objective == "confidence":
        return out.slot_confidence_logits
    raise ValueError(f"unknown objective {objective!r}; choose 'mask', 'heatmap' or 'confidence'")


def detach_output(out: HeadOutput) -> HeadOutput:
    """A copy of `out` cut from the graph (keeps no autograd memory alive)."""
    return dataclasses.replace(
        out,
        slot_heatmaps=out.slot_heatmaps.detach(),
        slot_confidence_logits=out.slot_confidence_logits.detach(),
        slot_masks=out.slot_masks.detach(),
        slot_queries=out.slot_queries.detach(),
        slot_reps=out.slot_reps.detach(),
        support=out.support.detach(),
    )


@dataclass
class AttributionResult:
    """Attribution of one batch (B samples, K slots attributed, E support entries)."""

    atoms: pd.DataFrame
    """One row per (sample, slot, atom), ranked within each (sample, slot): sample, sample_id, slot, rank,
    atom, act_grad, share (of Σ|act_grad| of the slot), attention, attention_rank, n_entries, n_tokens,
    value_sum, fired_at (the tokens with type, text or image (row, col))."""
    tokens: pd.DataFrame
    """One row per (sample, slot, token): act_grad and abs_act_grad (Σ over the token's entries of act × grad
    and of its magnitude), n_atoms, and with token info its type, text, image (row, col) and pixel box.
    With a one-layer aggregator act_grad sums to ≈ 0 per token: the pre-norm LayerNorm makes every slot
    invariant to rescaling one concept token (Euler), so look at abs_act_grad there."""
    objectives: pd.DataFrame
    """One row per (sample, slot): objective value, region_pixels, confidence (probability)."""
    entry_scores: Tensor
    """[len(slots), E] act × grad per attributed slot and support entry (order of `reference.support`)."""
    slots: list[int]
    """The attributed slots (rows of `entry_scores`)."""
    reference: HeadOutput
    """The (detached) forward that was attributed."""
    regions: Tensor
    """[B, K, S, S] bool predicted mask regions of `reference` (the 'mask' objective's support)."""
    config: AttributionConfig
    """Settings used."""

    def top_atoms(self, sample: int, slot: int, n: int) -> list[int]:
        """The `n` best-ranked atoms of (sample, slot)."""
        t = self.atoms
        sel = t[(t["sample"] == sample) & (t["slot"] == slot)]
        if sel.empty:
            raise ValueError(
                f"no attribution for sample {sample}, slot {slot} (slots attributed: {self.slots})"
            )
        return [int(a) for a in sel.sort_values("rank")["atom"].head(n)]


def attribute(head: nn.Module, inputs: HeadInputs, cfg: AttributionConfig | None = None) -> AttributionResult:
    """Act × grad and attention scores of every (sample, slot, atom) of one batch.

    Raises:
        ValueError: a slot out of range, or an empty support (nothing to attribute).
    """
    cfg = cfg or AttributionConfig()
    slots = check_slots(cfg.slots, head.cfg.num_slots)
    if head.training:
        logger.warning("attributing a head in training mode (dropout is active): call head.eval() first")
    tap = ValueTap()
    with torch.enable_grad():
        out = inputs.forward(head, tap)
        support = out.support
        if support.num_entries == 0:
            raise ValueError(
                "the concept support is empty (no SAE atom reaches tau on the selected tokens): nothing to attribute"
            )
        values = support.values
        regions = slot_regions(out, cfg.mask_threshold)
        objective = slot_objectives(out, cfg.objective, regions)  # [B, K]
        grads = []
        for i, k in enumerate(slots):
            (g,) = torch.autograd.grad(
                objective[:, k].sum(), values, retain_graph=i < len(slots) - 1, allow_unused=True
            )
            grads.append(torch.zeros_like(values) if g is None else g)
    scores = values.detach() * torch.stack(grads)  # [len(slots), E]
    ref = detach_output(out)
    atoms = atom_table(ref, scores, slots, inputs, cfg.attention_layer, cfg.rank_by, cfg.max_listed_tokens)
    tokens = token_table(ref, scores, slots, inputs)
    obj = objective.detach()
    conf = ref.slot_confidence
    objectives = pd.DataFrame(
        [
            {
                "sample": b,
                "sample_id": inputs.sample_id(b),
                "slot": k,
                "objective": cfg.objective,
                "value": float(obj[b, k]),
                "region_pixels": int(regions[b, k].sum()),
                "confidence": float(conf[b, k]),
            }
            for b in range(inputs.batch_size)
            for k in slots
        ]
    )
    return AttributionResult(atoms, tokens, objectives, scores, slots, ref, regions, cfg)


def add_share_bars(
    fig: Any, top: pd.DataFrame, attention_total: float, hover: Any, row: int, col: int
) -> None:
    """One slot's `top` atoms as two grouped bars in subplot (row, col): |act × grad| share and attention share
    (of the slot's `attention_total`; NaN when it is 0)."""
    labels = [f"atom {a}" for a in top["atom"]]
    bars = (
        ("|act×grad| share", top["share"].abs(), "#1f77b4", "ag", hover),
        ("attention share", top["attention"] / attention_total if attention_total > 0 else top["attention"] * float("nan"), "#ff7f0e", "att", None),
    )  # fmt: skip
    for name, y, colour, group, text in bars:
        fig.add_trace(
            go.Bar(x=labels, y=y, name=name, marker_color=colour, hovertext=text, showlegend=row == 1,
                   legendgroup=group),
            row=row,
            col=col,
        )  # fmt: skip


def attribution_figure(
    result: AttributionResult | pd.DataFrame, *, sample: int = 0, top: int = 10
) -> go.Figure:
    """Bars of one sample's top atoms per slot: |act × grad| share beside the attention share (hover: rank,
    signed act × grad, entries, where the atom fired)."""
    table = result.atoms if isinstance(result, AttributionResult) else result
    table = table[table["sample"] == sample]
    if table.empty:
        raise ValueError(f"no attribution rows for sample {sample}")
    slots = sorted(table["slot"].unique())
    fig = make_subplots(rows=len(slots), cols=1, subplot_titles=[f"slot {k}" for k in slots])
    for row, k in enumerate(slots, start=1):
        t = table[table["slot"] == k].sort_values("rank").head(top)
        hover = [
            f"rank {r}<br>act×grad {v:.4g}<br>entries {n}<br>{f}"
            for r, v, n, f in zip(t["rank"], t["act_grad"], t["n_entries"], t["fired_at"], strict=True)
        ]
        add_share_bars(fig, t, table.loc[table["slot"] == k, "attention"].abs().sum(), hover, row, 1)
    fig.update_layout(
        barmode="group",
        height=260 * len(slots) + 80,
        template="plotly_white",
        title=f"Top atoms per slot (sample {sample}), ranked by act × grad",
    )
    return fig
