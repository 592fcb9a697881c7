"""The policy (docs/design.md §3): chat prompt → ``<think>…</think>`` + K ``<REF_POS>``; rollouts and the one
forward that yields log-probs, hook-layer states and concentration-token states.

::

    rollouts = generate_rollouts(backbone, images, texts, PolicyConfig(), group_size=8)
    states = policy_forward(backbone, rollouts, PolicyConfig())   # logp, hook_states, concentration_states
"""

from .config import PolicyConfig
from .forward import PolicyStates, gather_concentration, policy_forward, reference_logprobs, response_logprobs
from .rollout import Rollouts, eos_ids, generate_rollouts, response_mask_of, rollouts_from_responses

__all__ = [
    "PolicyConfig",
    "PolicyStates",
    "Rollouts",
    "eos_ids",
    "gather_concentration",
    "generate_rollouts",
    "policy_forward",
    "reference_logprobs",
    "response_logprobs",
    "response_mask_of",
    "rollouts_from_responses",
]
