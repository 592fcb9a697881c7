"""The one policy forward over prompt + response: token log-probs, hook-layer states, concentration states.

Nothing is run twice: the same forward that gives the response log-probs (with gradient, for the policy
loss) gives ``hidden_states[L]`` (the SAE's input; computed by frozen blocks only, so it carries no graph)
and the last-layer states of the concentration tokens (with gradient: L_seg reaches the policy through
them). Logits are computed only at the R + 1 last positions (``logits_to_keep``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sae.token_types import TokenType
from segcompass.backbones import Backbone

from .config import PolicyConfig
from .rollout import Rollouts


@dataclass
class PolicyStates:
    """What the policy forward yields for N responses (T = P + R positions, D = hidden size)."""

    logp: Tensor
    """float32 [N, R] log-prob of each response token (0 where `response_mask` is false)."""
    response_mask: Tensor
    """bool [N, R] valid response tokens."""
    hook_states: Tensor
    """[N, T, D] HF ``hidden_states[L]`` (the SAE's input), detached."""
    concept_token_mask: Tensor
    """bool [N, T] positions whose hook states enter the head (`PolicyConfig.concept_token_types`)."""
    concentration_states: Tensor
    """[N, K, D] last-layer states of the first K ``<REF_POS>`` tokens, zero rows where missing
    ([N, 1, D]: the last one, in ``single`` mode)."""
    concentration_found: Tensor
    """int64 [N] ``<REF_POS>`` tokens found in each response (before capping at K)."""


def response_logprobs(logits: Tensor, response_ids: Tensor, response_mask: Tensor) -> Tensor:
    """logits [N, R + 1, V] at positions P − 1 … P + R − 1 → log-prob [N, R] of each response token."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [N, R, V]
    picked = logp.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # [N, R]
    return picked * response_mask


def gather_concentration(
    last_states: Tensor, token_types: Tensor, num_slots: int, mode: str
) -> tuple[Tensor, Tensor]:
    """[N, T, D] states + [N, T] types → ([N, K, D] or [N, 1, D] states, [N] counts)."""
    n, _, d = last_states.shape
    is_conc = token_types == TokenType.CONCENTRATION  # [N, T]
    found = is_conc.sum(dim=1)
    k = num_slots if mode == "multi" else 1
    out = last_states.new_zeros(n, k, d)
    rows = []
    for i in range(n):
        pos = torch.nonzero(is_conc[i]).flatten()
        pos = pos[:k] if mode == "multi" else pos[-1:]
        rows.append(pos)
    idx_n = torch.cat([torch.full_like(p, i) for i, p in enumerate(rows)])
    idx_k = torch.cat([torch.arange(len(p), device=p.device) for p in rows])
    idx_t = torch.cat(rows)
    if idx_t.numel():
        out = out.index_put((idx_n, idx_k), last_states[idx_n, idx_t])
    return out, found


def policy_forward(backbone: Backbone, rollouts: Rollouts, config: PolicyConfig) -> PolicyStates:
    """Run the backbone once over prompt + response (gradient enabled unless under ``no_grad``)."""
    inputs = rollouts.full_inputs()
    r = rollouts.response_ids.shape[1]
    out = backbone.model(**inputs, output_hidden_states=True, logits_to_keep=r + 1, use_cache=False)
    logits = out.logits  # [N, R + 1, V]
    if logits.shape[1] != r + 1:  # a model that ignores logits_to_keep
        logits = logits[:, -(r + 1) :]
    logp = response_logprobs(logits, rollouts.response_ids, rollouts.response_mask)
    hidden = out.hidden_states
    hook = hidden[backbone.hook_layer].detach()  # [N, T, D]
    conc, found = gather_concentration(hidden[-1], rollouts.token_types, config.num_slots, config.mode)
    type_ids = torch.tensor(config.concept_type_ids, device=rollouts.token_types.device)
    concept_mask = torch.isin(rollouts.token_types, type_ids) & inputs["attention_mask"].bool()
    return PolicyStates(logp, rollouts.response_mask, hook, concept_mask, conc, found)


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, rollouts: Rollouts) -> Tensor:
    """[N, R] response log-probs under a frozen reference model (same architecture, no hidden states)."""
    inputs = rollouts.full_inputs()
    r = rollouts.response_ids.shape[1]
    was = model.training
    model.eval()
    try:
        logits = model(**inputs, logits_to_keep=r + 1, use_cache=False).logits
    finally:
        model.train(was)
    if logits.shape[1] != r + 1:
        logits = logits[:, -(r + 1) :]
    return response_logprobs(logits, rollouts.response_ids, rollouts.response_mask)
