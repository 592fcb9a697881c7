"""Referent objective: the concentration tokens' last-layer states name what the instruction refers to.

In the paper the 7B policy's concentration states e_k come out of large-scale training and are shaped
further by the segmentation loss that reaches them. A 1 M-parameter backbone warmed up for a few CPU
minutes gets no such pressure: predicting `<REF_POS>` after `<REF_POS>` needs nothing from the instruction,
and linear probes find the referent's colour / shape in e_0 barely above the majority rate
(results/head_diagnosis.md §4). This auxiliary objective adds that pressure during the warm-up: a linear
probe reads each of the K states and predicts the words of the instruction's target descriptor (its
colour, shape and size, or "none" when the instruction does not name one) and whether it asks for every
match. The labels come from the instruction's text alone — no scene attribute the instruction does not
state — so e_k carries what the policy read, not what a ground truth knows. The probe is discarded after the
warm-up; only the backbone keeps what it learnt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcompass.backbones import TokenType
from segcompass.world.scene import WorldSample
from segcompass.world.vocab import COLOURS, SHAPES, SIZES

REFERENT_FIELDS: dict[str, tuple[str, ...]] = {
    "colour": ("none", *COLOURS),
    "shape": ("none", *SHAPES),
    "size": ("none", *SIZES),
    "plural": ("one", "every"),
}
"""Label vocabulary of each probed field (index 0: not named / singular)."""


def referent_labels(sample: WorldSample) -> tuple[int, ...]:
    """Indices into `REFERENT_FIELDS` of the words the instruction names for its target."""
    query = sample.query
    if query is None:
        raise ValueError(f"sample {sample.sample_id!r} has no structured query to take referent labels from")
    target = query.target
    words = {"colour": target.colour, "shape": target.shape, "size": target.size}
    labels = [REFERENT_FIELDS[f].index(words[f] or "none") for f in ("colour", "shape", "size")]
    return (*labels, int(bool(query.plural)))


class ReferentProbe(nn.Module):
    """One linear classifier per field over a concentration state (hidden size D)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.heads = nn.ModuleDict({f: nn.Linear(hidden_size, len(v)) for f, v in REFERENT_FIELDS.items()})

    def forward(self, states: Tensor) -> dict[str, Tensor]:
        """states [N, D] → field → logits [N, n_classes]."""
        return {f: head(states) for f, head in self.heads.items()}


@dataclass
class ReferentResult:
    """The referent loss of a batch and the probe's accuracy on it."""

    loss: Tensor
    """Mean over fields of the cross-entropy over every concentration token (scalar, with graph)."""
    accuracy: dict[str, float]
    """Field → fraction of concentration tokens whose probe prediction is right."""


def referent_loss(
    probe: ReferentProbe, last_states: Tensor, token_types: Tensor, labels: Tensor
) -> ReferentResult:
    """Probe every concentration token of the batch against its sample's labels.

    Args:
        last_states: [B, T, D] last-layer states (HF ``hidden_states[-1]``, what the head reads as e_k).
        token_types: [B, T] `TokenType` ids of the batch.
        labels: [B, F] int64 `referent_labels` of each sample (F = len(REFERENT_FIELDS)).
    """
    if labels.ndim != 2 or labels.shape != (last_states.shape[0], len(REFERENT_FIELDS)):
        raise ValueError(
            f"labels must be [B={last_states.shape[0]}, {len(REFERENT_FIELDS)}], got {tuple(labels.shape)}"
        )
    rows, cols = torch.nonzero(token_types == int(TokenType.CONCENTRATION), as_tuple=True)
    if rows.numel() == 0:
        raise ValueError("no concentration token in the batch: the referent loss needs format examples")
    logits = probe(last_states[rows, cols].float())  # field → [N_conc, n_classes]
    target = labels[rows]  # [N_conc, F]
    losses, accuracy = [], {}
    for j, (field, field_logits) in enumerate(logits.items()):
        losses.append(F.cross_entropy(field_logits, target[:, j]))
        accuracy[field] = float((field_logits.argmax(-1) == target[:, j]).float().mean())
    return ReferentResult(torch.stack(losses).mean(), accuracy)
