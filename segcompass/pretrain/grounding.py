"""Attention grounding for instruction tuning: the answer to a question about a named object attends to
that object's image tokens.

Real MLLMs learn where a phrase's referent is from grounding data (boxes, points, region captions). The
tiny language model, trained from scratch on answers alone, does not learn the look-up "find the tokens of
the red star, read them": its answers do not follow the named object, even on oracle image tokens
(results/warmup.md). This objective supervises the look-up itself: at the position that predicts a
question's answer, the attention mass on the named object's image tokens, −log of it for the best head (or
every head) of each chosen layer. Alone, on stage 3's data, the attention learned it and the answers did not
change; with the object-vector phases of stage 0, where the look-up forms, it is on (every head of layers 2–3,
there and in stage 3). An answer that names objects in passing (the format turn's reasoning, "the large orange
diamond at the centre") can carry them as `Turn.mentions`: every token of such a phrase is then predicted
attending to its object, as grounded captions pair a phrase with its box. The format turn's
`<REF_POS>` tokens can read the instruction's targets (`Turn.slot_reads`, stage 3's `slot_grounding`): the
state at each token, which the head reads as e_k, attends to its target.

The attention probabilities are recomputed from each chosen layer's own query/key projections of its input
(captured by a forward pre-hook) at the answer positions only, so the model keeps its fast attention kernel;
`answer_attention` equals the eager attention weights at those rows (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb, repeat_kv

from segcompass.backbones import Backbone

from .dialogue import Dialogue, Turn
from .labels import covering_object
from .pool import ScenePool


@dataclass
class Grounding:
    """The grounding objective's settings."""

    weight: float = 0.0
    """Weight of the grounding loss beside the next-token loss (0: off)."""
    layers: tuple[int, ...] = (1, 2, 3)
    """Decoder layers asked to attend to the named object (0-based)."""
    heads: str = "best"
    """`best`: the layer's best head carries the look-up; `all`: every head of the layer does (the mean
    of their −log masses), so the layer's whole attention output at the answer is the object's."""

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        if self.weight < 0 or not self.layers or self.heads not in ("best", "all"):
            raise ValueError(f"need weight >= 0, at least one layer and heads 'best' or 'all'; got {self}")


def every_head_of_layers_2_3() -> Grounding:
    """The stack's grounding: weight 1 on every head of decoder layers 2–3 (stage 0's object phases,
    stage 2's tower tuning, stage 3)."""
    return Grounding(weight=1.0, layers=(2, 3), heads="all")


@dataclass
class GroundingTargets:
    """Where each grounded answer is predicted and which image tokens it should read."""

    rows: torch.Tensor
    """int64 [N]: batch row of each grounded answer."""
    positions: torch.Tensor
    """int64 [N]: sequence position whose attention is asked to read the object (the one whose logits predict
    the answer's first token, a mentioned token, or a `<REF_POS>` itself)."""
    token_mask: torch.Tensor
    """bool [N, T]: the named object's image tokens (the cells it covers at least half of)."""


def grounding_targets(
    backbone: Backbone,
    pool: ScenePool,
    dialogues: list[Dialogue],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
) -> GroundingTargets:
    """Targets of every turn with a named object (`Turn.target`: the position that predicts the answer), of
    every token of each object an answer names (`Turn.mentions`) and of every concentration token that reads a
    target (`Turn.slot_reads`: the token's own position), whose object covers at least one cell.

    Assistant turns are the labelled spans of `labels` [B, T], in the order of the dialogue's turns; image
    tokens are taken in raster order, as the processor lays them out. A dialogue with the scene in words
    (`Dialogue.context`) has none."""
    image_id = backbone.image_token_id
    rows, positions, masks = [], [], []
    for b, dialogue in enumerate(dialogues):
        labelled = (labels[b] != -100).numpy()
        starts = np.flatnonzero(labelled & ~np.concatenate([[False], labelled[:-1]]))
        if len(starts) != len(dialogue.turns):
            raise ValueError(f"row {b}: {len(starts)} labelled spans for {len(dialogue.turns)} turns")
        if dialogue.context is not None:  # the scene in words: no image tokens to attend to
            continue
        image_positions = torch.nonzero(input_ids[b] == image_id).squeeze(-1)  # [cells]
        owner = covering_object(pool[dialogue.scene].coverage)  # [cells]
        if len(owner) != len(image_positions):
            raise ValueError(f"row {b}: {len(image_positions)} image tokens for a {len(owner)}-cell grid")
        for turn, start in zip(dialogue.turns, starts, strict=True):
            grounded = [(int(start) - 1, turn.target)] if turn.target is not None else []
            if turn.mentions:
                grounded += _span_positions(backbone, turn, turn.mentions, input_ids[b], int(start), -1)
            if turn.slot_reads:
                grounded += _span_positions(backbone, turn, turn.slot_reads, input_ids[b], int(start), 0)
            for position, target in grounded:
                if not (owner == target).any():  # an object too small to own a cell: nothing to attend to
                    continue
                mask = torch.zeros(input_ids.shape[1], dtype=torch.bool)
                mask[image_positions[torch.from_numpy(owner == target)]] = True
                rows.append(b)
                positions.append(position)
                masks.append(mask)
    if not rows:
        empty = torch.zeros(0, dtype=torch.long)
        return GroundingTargets(empty, empty, torch.zeros(0, input_ids.shape[1], dtype=torch.bool))
    return GroundingTargets(torch.tensor(rows), torch.tensor(positions), torch.stack(masks))


def _span_positions(
    backbone: Backbone,
    turn: Turn,
    spans: tuple[tuple[int, int, int], ...],
    row_ids: torch.Tensor,
    start: int,
    shift: int,
) -> list[tuple[int, int]]:
    """(position, object) for every token of the turn's answer that overlaps one of `spans` (first char, end
    char, object): with `shift` −1 the position whose logits predict the token (`Turn.mentions`), with 0 the
    token's own position (`Turn.slot_reads`: the state at a `<REF_POS>`). The answer starts at `start` of
    `row_ids`."""
    encoded = backbone.tokenizer(turn.answer, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if row_ids[start : start + len(ids)].tolist() != ids:
        raise ValueError(f"the answer {turn.answer[:40]!r}… is tokenised differently inside its dialogue")
    out = []
    for first, end, target in spans:
        for j, (a, b) in enumerate(encoded["offset_mapping"]):
            if a < end and b > first:  # the token overlaps the span
                out.append((start + j + shift, target))
    return out


@contextmanager
def capture_attention_inputs(backbone: Backbone, layers: tuple[int, ...]) -> Iterator[dict[int, tuple]]:
    """While open, each forward stores {layer: (hidden_states [B, T, D], (cos, sin))} of the chosen decoder
    layers' attention inputs (kept in the graph, so a loss on them trains the layers below)."""
    captured: dict[int, tuple] = {}
    decoder = backbone.model.model.language_model.layers
    handles = []
    for layer in layers:

        def hook(module, args, kwargs, layer=layer):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[layer] = (hidden, kwargs["position_embeddings"])

        handles.append(decoder[layer].self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def answer_attention(
    attention: torch.nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor,
    targets: GroundingTargets,
) -> torch.Tensor:
    """float [N, H, T]: a decoder layer's attention weights at the answer positions (causal, padding
    masked), recomputed from its query/key projections of `hidden` [B, T, D]."""
    bsz, length, _ = hidden.shape
    head_dim = attention.head_dim
    query = attention.q_proj(hidden).view(bsz, length, -1, head_dim).transpose(1, 2)  # [B, H, T, d]
    key = attention.k_proj(hidden).view(bsz, length, -1, head_dim).transpose(1, 2)  # [B, Hkv, T, d]
    query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
    key = repeat_kv(key, attention.num_key_value_groups)  # [B, H, T, d]
    q = query[targets.rows, :, targets.positions]  # [N, H, d]
    scores = torch.einsum("nhd,nhtd->nht", q, key[targets.rows]) * attention.scaling  # [N, H, T]
    keys = torch.arange(length)
    allowed = (keys[None] <= targets.positions[:, None]) & attention_mask[targets.rows].bool()  # [N, T]
    return scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)


def grounding_loss(
    backbone: Backbone,
    captured: dict[int, tuple],
    attention_mask: torch.Tensor,
    targets: GroundingTargets,
    heads: str = "best",
) -> torch.Tensor:
    """Mean over answers and chosen layers of −log(attention mass on the named object's tokens) of the
    layer's best head (`heads="best"`) or of each head (`"all"`); 0 (in the graph) when the batch has no
    grounded answer."""
    if len(targets.rows) == 0:
        return sum(h.sum() for h, _ in captured.values()) * 0.0
    decoder = backbone.model.model.language_model.layers
    losses = []
    for layer, (hidden, position_embeddings) in sorted(captured.items()):
        weights = answer_attention(
            decoder[layer].self_attn, hidden, position_embeddings, attention_mask, targets
        )
        mass = (weights * targets.token_mask[:, None]).sum(-1)  # [N, H]
        picked = mass.max(-1).values if heads == "best" else mass  # [N] or [N, H]
        losses.append(-torch.log(picked.clamp_min(1e-6)).mean())
    return torch.stack(losses).mean()
