"""What a token position is. Every captured activation carries one of these labels."""

from __future__ import annotations

from enum import IntEnum


class TokenType(IntEnum):
    """Role of a token position in a multimodal prompt + response.

    The integer values are part of the activation-store format: never renumber, only append.
    """

    PAD = 0
    """Padding; never stored."""
    SPECIAL = 1
    """Chat-template and special tokens: role markers, BOS, vision start/end, `<think>`/`</think>`."""
    IMAGE = 2
    """Image placeholder positions (one per visual token after the projector/merger)."""
    INSTRUCTION = 3
    """The user's instruction text."""
    COT = 4
    """Generated reasoning inside `<think>…</think>`."""
    CONCENTRATION = 5
    """Generated concentration tokens (`<REF_POS>`), whose last-layer states become the slot queries."""
    RESPONSE = 6
    """Other generated text (outside `<think>` and not a concentration token)."""

    @classmethod
    def parse(cls, name: str | int | TokenType) -> TokenType:
        """`"image"`, `"IMAGE"`, `2` or `TokenType.IMAGE` → `TokenType.IMAGE`; unknown names list the valid ones."""
        if isinstance(name, TokenType):
            return name
        if isinstance(name, int):
            return cls(name)
        try:
            return cls[name.strip().upper()]
        except KeyError:
            valid = ", ".join(t.name.lower() for t in cls)
            raise ValueError(f"unknown token type {name!r}; valid: {valid}") from None
