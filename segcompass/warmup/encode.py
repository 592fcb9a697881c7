"""Examples → model inputs with response-only labels; the response loss and per-sequence log-likelihoods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segcompass.backbones import Backbone, PreparedBatch

from .tasks import Example

IGNORE_INDEX = -100
"""Label of positions the loss skips (prompt, image, padding)."""


@dataclass
class EncodedBatch:
    """A prepared batch plus its labels."""

    prepared: PreparedBatch
    """Inputs, token types, response starts (from `Backbone.prepare`)."""
    labels: torch.Tensor
    """int64 [B, T]: the input id at response positions (response + end-of-turn), −100 elsewhere."""

    @property
    def inputs(self):
        return self.prepared.inputs


def end_of_turn(backbone: Backbone) -> str:
    """The token that ends an assistant turn (and stops generation): the tokenizer's EOS."""
    return backbone.tokenizer.eos_token


def encode(backbone: Backbone, examples: Sequence[Example]) -> EncodedBatch:
    """Tokenise `examples` (left-padded); responses end with the end-of-turn token, which is supervised
    too so that the model learns to stop."""
    eot = end_of_turn(backbone)
    prepared = backbone.prepare(
        [e.image for e in examples],
        [e.prompt for e in examples],
        responses=[e.response + eot for e in examples],
    )
    ids = prepared.inputs["input_ids"]  # [B, T]
    positions = torch.arange(ids.shape[1])[None, :]  # [1, T]
    keep = (positions >= prepared.response_start[:, None]) & prepared.inputs["attention_mask"].bool()
    labels = torch.where(keep, ids, torch.full_like(ids, IGNORE_INDEX))
    return EncodedBatch(prepared, labels)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next label under `logits` and where labels count.

    logits [B, T, V], labels [B, T] → (logp [B, T−1], mask [B, T−1]); position t predicts label t + 1.
    """
    target = labels[:, 1:]  # [B, T-1]
    mask = target != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, T-1, V]
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    return picked * mask, mask


def response_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-level mean cross-entropy over the response tokens of the batch (a scalar)."""
    target = labels[:, 1:]  # [B, T-1]
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX
    )


def forward_logits(backbone: Backbone, batch: EncodedBatch, bf16: bool = False) -> torch.Tensor:
    """The model's logits [B, T, V] (bf16 autocast optional)."""
    return forward_outputs(backbone, batch, bf16)[0]


def forward_outputs(
    backbone: Backbone, batch: EncodedBatch, bf16: bool = False, last_states: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits [B, T, V], last-layer states [B, T, D] when `last_states` else None) of one forward."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = backbone.model(**batch.inputs, output_hidden_states=last_states)
    return out.logits, (out.hidden_states[-1] if last_states else None)


@torch.no_grad()
def sequence_logprobs(backbone: Backbone, examples: Sequence[Example], batch_size: int = 64) -> torch.Tensor:
    """Summed log-likelihood of each example's response (with the end-of-turn token), float64 [N]."""
    backbone.model.eval()
    out = []
    for i in range(0, len(examples), batch_size):
        batch = encode(backbone, examples[i : i + batch_size])
        logp, _ = token_logprobs(forward_logits(backbone, batch), batch.labels)
        out.append(logp.double().sum(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@torch.no_grad()
def mean_response_loss(backbone: Backbone, examples: Sequence[Example], batch_size: int = 64) -> float:
    """Token-level mean cross-entropy over all response tokens of `examples` (held-out loss)."""
    backbone.model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = encode(backbone, examples[i : i + batch_size])
        logp, mask = token_logprobs(forward_logits(backbone, batch), batch.labels)
        total -= float(logp.double().sum())
        count += int(mask.sum())
    return total / max(count, 1)
