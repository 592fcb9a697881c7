"""Format reward (docs/design.md §4): 0 unless exactly one non-empty ``<think>…</think>`` and exactly K
concentration tokens after it (``expected_tokens``: the policy's, `PolicyConfig.head_slots` — K in ``multi``
mode, one in ``single`` mode as the reference; K has its one home in `PolicyConfig.num_slots`); 0.9
instead of 1 when the think block is over 2048 characters, text precedes ``<think>``, or more than 10
words stand between ``</think>`` and the last token (the tokens themselves not counted; with one token this
is the reference's rule). Text after the last token is recorded (``words_after``) but not penalised, as in
the reference code. All parts are returned for logging (CoT length, which rule failed), so that a policy
learning to skip its reasoning shows up in the logs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class FormatRewardConfig:
    """Rules of the format reward."""

    token: str = "<REF_POS>"
    """The concentration token."""
    think_open: str = "<think>"
    """Opening tag of the reasoning block."""
    think_close: str = "</think>"
    """Closing tag of the reasoning block."""
    max_think_chars: int = 2048
    """A think block longer than this (characters inside the tags) earns ``reduced``."""
    max_words_between: int = 10
    """More words than this between ``</think>`` and the last token earn ``reduced``."""
    full: float = 1.0
    """Reward of a well-formed response."""
    reduced: float = 0.9
    """Reward of a valid but untidy response."""


@dataclass
class FormatResult:
    """The format reward and the parts it was computed from (log them: CoT length, format parts)."""

    reward: float
    """0, ``reduced`` or ``full``."""
    failure: str | None
    """Hard rule that failed (``think_blocks``, ``empty_think``, ``token_count``, ``token_before_think``)
    or None."""
    num_think_open: int
    """Occurrences of the opening tag."""
    num_think_close: int
    """Occurrences of the closing tag."""
    think_chars: int
    """Characters inside the think block (0 when there is no single block)."""
    think_words: int
    """Whitespace-separated words inside the think block."""
    num_tokens: int
    """Concentration tokens found anywhere in the response."""
    expected_tokens: int
    """Concentration tokens demanded."""
    text_before_think: bool
    """Non-whitespace text precedes the opening tag."""
    words_between: int
    """Words between ``</think>`` and the last token, tokens excluded."""
    words_after: int
    """Words after the last token (recorded, not penalised)."""
    long_think: bool
    """The think block exceeds ``max_think_chars``."""

    def as_dict(self) -> dict[str, object]:
        """Flat dict for metric loggers."""
        return asdict(self)


def format_reward(
    text: str, config: FormatRewardConfig | None = None, *, expected_tokens: int
) -> FormatResult:
    """Score the format of one decoded response that must end in `expected_tokens` concentration tokens (the
    policy's `head_slots`; see the module docstring for the rules)."""
    cfg = config or FormatRewardConfig()
    if expected_tokens < 1:
        raise ValueError(f"expected_tokens must be >= 1, got {expected_tokens}")
    r = FormatResult(
        reward=0.0, failure=None, num_think_open=text.count(cfg.think_open),
        num_think_close=text.count(cfg.think_close), think_chars=0, think_words=0,
        num_tokens=text.count(cfg.token), expected_tokens=expected_tokens, text_before_think=False,
        words_between=0, words_after=0, long_think=False,
    )  # fmt: skip
    start, close = text.find(cfg.think_open), text.find(cfg.think_close)
    if r.num_think_open != 1 or r.num_think_close != 1 or close < start:
        r.failure = "think_blocks"
        return r
    think = text[start + len(cfg.think_open) : close]
    after_close = close + len(cfg.think_close)
    r.think_chars, r.think_words = len(think), len(think.split())
    r.text_before_think = bool(text[:start].strip())
    r.long_think = len(think) > cfg.max_think_chars
    if not think.strip():
        r.failure = "empty_think"
    elif r.num_tokens != r.expected_tokens:
        r.failure = "token_count"
    elif text.find(cfg.token) < after_close:
        r.failure = "token_before_think"
    if r.failure:
        return r
    last_end = text.rfind(cfg.token) + len(cfg.token)
    r.words_between = len(text[after_close:last_end].replace(cfg.token, " ").split())
    r.words_after = len(text[last_end:].split())
    untidy = r.long_think or r.text_before_think or r.words_between > cfg.max_words_between
    r.reward = cfg.reduced if untidy else cfg.full
    return r
