"""Configuration of the policy: how prompts are built, how responses are sampled, what the head reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sae.token_types import TokenType

ConcentrationMode = Literal["multi", "single"]


def _default_concept_types() -> tuple[str, ...]:
    return ("IMAGE", "INSTRUCTION", "COT")


@dataclass
class PolicyConfig:
    """The policy's prompt, decoding and state read-out (docs/design.md §3–4 and decisions)."""

    num_slots: int = 4
    """K: concentration tokens the policy emits after ``</think>`` (``multi`` mode) and head slots."""
    mode: ConcentrationMode = "multi"
    """``multi``: the first K ``<REF_POS>`` states feed the K slots (the paper); ``single``: the reference
    code's one token, whose state is given to every slot."""
    prompt_template: str = "{text}"
    """User text of the chat prompt; ``{text}`` is the sample's sentence (the warm-up trains on the bare
    sentence; a real 7B policy may want an explicit instruction about the output format)."""
    image_first: bool = True
    """Image before the instruction in the chat prompt (the families' default)."""
    system: str | None = None
    """System prompt (None: the family's default)."""
    max_new_tokens: int = 128
    """Longest response sampled or decoded. A response cut here has no concentration tokens; the synthetic
    world's reference responses are 93 tokens at the 90th percentile and 2 % of them exceed 128."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (docs/design.md §4)."""
    top_p: float = 1.0
    """Nucleus sampling mass of the rollouts (1 = plain sampling)."""
    concept_token_types: tuple[str, ...] = field(default_factory=_default_concept_types)
    """`TokenType` names whose hook-layer states enter the head's concept interface (docs/design.md §3:
    prompt, image tokens and CoT)."""

    def __post_init__(self) -> None:
        if self.num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {self.num_slots}")
        if self.mode not in ("multi", "single"):
            raise ValueError(f"mode must be 'multi' or 'single', got {self.mode!r}")
        if "{text}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{text}'")
        if self.max_new_tokens < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("need max_new_tokens >= 1, temperature > 0 and 0 < top_p <= 1")
        unknown = [t for t in self.concept_token_types if t not in TokenType.__members__]
        if unknown:
            raise ValueError(f"unknown token types {unknown}; known: {list(TokenType.__members__)}")

    @property
    def concept_type_ids(self) -> tuple[int, ...]:
        """`TokenType` values of `concept_token_types`."""
        return tuple(int(TokenType[t]) for t in self.concept_token_types)

    @property
    def head_slots(self) -> int:
        """Concentration tokens a complete response holds for the head: K in multi mode, 1 in single mode."""
        return self.num_slots if self.mode == "multi" else 1

    @property
    def head_concentration_mode(self) -> str:
        """The head's `concentration_mode` that matches `mode`."""
        return "per_slot" if self.mode == "multi" else "broadcast"
