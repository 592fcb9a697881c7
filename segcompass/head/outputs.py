"""Output records of the head: `HeadOutput` and the slot `Provenance`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .aggregator import AggregatorOutput
from .losses import HeadLosses
from .matching import Match
from .support import ConceptSupport, TokenBags


@dataclass
class SampleProvenance:
    """Where one sample's slots came from: support entries and the slots' attention over them (detached)."""

    token_idx: Tensor
    """[E] token position (in hook_states) of each support entry."""
    atom_idx: Tensor
    """[E] SAE atom of each entry."""
    values: Tensor
    """[E] activation of each entry."""
    concept_tokens: Tensor
    """[n] token position of each concept token (one per source token with a non-empty support)."""
    entry_concept: Tensor
    """[E] index into `concept_tokens` of each entry's token."""
    slot_attention: Tensor | None
    """[L, K, n] per aggregator layer, head-averaged attention of each slot over the concept tokens."""

    def entry_attention(self, layer: int = -1) -> Tensor:
        """[K, E]: attention of each slot on the token that holds each entry, at `layer`."""
        if self.slot_attention is None:
            raise ValueError("attention was not recorded (HeadConfig.record_attention=False)")
        return self.slot_attention[layer][:, self.entry_concept]

    def atom_scores(self, slot: int, layer: int = -1) -> tuple[Tensor, Tensor]:
        """Atoms feeding `slot`, scored by Σ over their entries of attention × |value|, descending.

        Returns:
            (atoms [A], scores [A]).
        """
        w = self.entry_attention(layer)[slot] * self.values.abs()  # [E]
        atoms, inv = torch.unique(self.atom_idx, return_inverse=True)
        scores = torch.zeros(atoms.shape[0], dtype=w.dtype).index_add_(0, inv.cpu(), w.cpu())
        order = torch.argsort(scores, descending=True)
        return atoms[order], scores[order]


@dataclass
class Provenance:
    """Per-sample provenance of a batch: slot → atoms → tokens (→ pixels via the heatmaps)."""

    samples: list[SampleProvenance]
    """One record per sample."""

    @staticmethod
    def build(support: ConceptSupport, bags: TokenBags, agg: AggregatorOutput) -> Provenance:
        """Assemble from the support, its bags and the aggregator's recorded attention."""
        sup = support.detach().to("cpu")
        bag_batch = bags.batch.cpu()
        bag_token, bag_pos, entry_bag = bags.token.cpu(), bags.slot_in_sample.cpu(), bags.entry_bag.cpu()
        attn = agg.slot_attention.detach().cpu() if agg.slot_attention is not None else None
        out = []
        for b in range(support.batch_size):
            em = sup.batch_idx == b
            bm = bag_batch == b
            n = int(bm.sum())
            out.append(
                SampleProvenance(
                    token_idx=sup.token_idx[em],
                    atom_idx=sup.atom_idx[em],
                    values=sup.values[em],
                    concept_tokens=bag_token[bm],
                    entry_concept=bag_pos[entry_bag[em]],
                    slot_attention=attn[:, b, :, :n] if attn is not None else None,
                )
            )
        return Provenance(out)


@dataclass
class HeadOutput:
    """Everything the head produces for a batch of B samples and K slots (S = 256, D = LLM width)."""

    slot_heatmaps: Tensor
    """[B, K, S, S] heatmap logits H_k."""
    slot_confidence_logits: Tensor
    """[B, K] raw confidence logits c_k."""
    slot_masks: Tensor
    """[B, K, S, S] mask logits M_k from the SAM mask decoder."""
    slot_queries: Tensor
    """[B, K, D] fused slot queries q_k."""
    slot_reps: Tensor
    """[B, K, d_c] aggregator outputs r_k."""
    support: ConceptSupport
    """The sparse concept support that fed the head (values keep their graph)."""
    provenance: Provenance
    """Per-sample support lists and slot attention (detached, on CPU)."""
    conf_threshold: float
    """Probability threshold that makes a slot confident."""
    matches: list[Match] | None = None
    """Per-sample Hungarian matching (when targets were given)."""
    losses: HeadLosses | None = None
    """Loss components (when targets were given)."""

    @property
    def slot_confidence(self) -> Tensor:
        """[B, K] sigmoid probabilities."""
        return torch.sigmoid(self.slot_confidence_logits)

    @property
    def confident(self) -> Tensor:
        """[B, K] bool: sigmoid(confidence) ≥ conf_threshold."""
        return self.slot_confidence >= self.conf_threshold

    def predicted_masks(self, threshold: float = 0.0) -> Tensor:
        """[B, S, S] bool: union of the confident slots' masks (mask logit > threshold)."""
        return ((self.slot_masks > threshold) & self.confident[..., None, None]).any(dim=1)
