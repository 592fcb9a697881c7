"""The verdict a report opens with: the headline figure with its CI beside its baseline and the random-init
control, and one sentence on what it means — all computed from the report's tables, never typed by hand.

Each feature builds its `Verdict` from its own result tables (`coverage/verdict.py`, `sparsity/verdict.py`,
`atoms/verdict.py`, `provenance/verdict.py`); `render_verdict` writes it as the page's first section, with
every number also in a `data-value` attribute, so tests can check it against the tables.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Literal

CONTROL_NOT_RUN = "control not run"
"""What the control's box says when the report has no random-init control."""


@dataclass(frozen=True)
class Estimate:
    """A figure with its confidence interval (NaN bounds: no interval)."""

    value: float
    low: float = math.nan
    high: float = math.nan

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def text(self, digits: int = 3) -> str:
        """ "0.781 [0.742, 0.815]" (or the value alone without an interval)."""
        if not math.isfinite(self.value):
            return "n/a"
        value = f"{self.value:.{digits}f}"
        return f"{value} [{self.low:.{digits}f}, {self.high:.{digits}f}]" if self.has_ci else value

    def signed(self, digits: int = 3) -> str:
        """The same with explicit signs (for differences): "+0.120 [+0.050, +0.190]"."""
        if not math.isfinite(self.value):
            return "n/a"
        value = f"{self.value:+.{digits}f}"
        return f"{value} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]" if self.has_ci else value

    def overlaps(self, other: Estimate) -> bool:
        """Whether the two intervals overlap (a figure without an interval is its own interval)."""
        lo, hi = (self.low, self.high) if self.has_ci else (self.value, self.value)
        olo, ohi = (other.low, other.high) if other.has_ci else (other.value, other.value)
        return lo <= ohi and olo <= hi


Direction = Literal["higher", "lower", "none"]


def direction(difference: Estimate) -> Direction:
    """ "higher" / "lower" when the difference's CI excludes 0 (above / below), else "none"."""
    if not difference.has_ci:
        return "none"
    if difference.low > 0:
        return "higher"
    if difference.high < 0:
        return "lower"
    return "none"


@dataclass(frozen=True)
class Verdict:
    """What a report opens with."""

    measure: str
    """What the headline figure measures, e.g. "coverage AUC of referred instances (trained backbone, l0)"."""
    headline: Estimate
    """The headline figure with its CI."""
    sentence: str
    """One sentence on what the numbers mean, computed from them."""
    baseline: Estimate | None = None
    """The figure it is compared with (random tokens, background tokens, shuffled labels, random atoms)."""
    baseline_name: str = "random tokens"
    """What the baseline is."""
    control: Estimate | None = None
    """The same figure on the random-init control (None: the control was not run)."""
    control_name: str = "random-init control"
    """What the control is."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Further one-line findings (other rankings, contrasts), computed like the sentence."""

    def text(self) -> str:
        """Plain text for a terminal: the figures on one line, then the sentence and the notes."""
        parts = [f"{self.measure}: {self.headline.text()}"]
        if self.baseline is not None:
            parts.append(f"{self.baseline_name} {self.baseline.text()}")
        parts.append(
            f"{self.control_name} {self.control.text()}" if self.control is not None else CONTROL_NOT_RUN
        )
        return "\n".join([" | ".join(parts), self.sentence, *self.notes])


def _box(role: str, name: str, estimate: Estimate | None, missing: str) -> str:
    if estimate is None:
        return (
            f'<div class="figure missing" data-role="{role}"><div class="name">{html.escape(name)}</div>'
            f'<div class="value">{html.escape(missing)}</div></div>'
        )
    ci = (
        f'<div class="ci">CI [{estimate.low:.3f}, {estimate.high:.3f}]</div>'
        if estimate.has_ci
        else '<div class="ci">no CI</div>'
    )
    return (
        f'<div class="figure" data-role="{role}" data-value="{estimate.value!r}" data-low="{estimate.low!r}" '
        f'data-high="{estimate.high!r}"><div class="name">{html.escape(name)}</div>'
        f'<div class="value">{estimate.value:.3f}</div>{ci}</div>'
    )


def render_verdict(verdict: Verdict) -> str:
    """The verdict as an HTML section (`id="verdict"`): three figure boxes, the sentence, the notes."""
    boxes = [
        _box("headline", verdict.measure, verdict.headline, "n/a"),
        _box("baseline", verdict.baseline_name, verdict.baseline, "no baseline"),
        _box("control", verdict.control_name, verdict.control, CONTROL_NOT_RUN),
    ]
    if verdict.baseline is None:
        boxes.pop(1)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in verdict.notes)
    return "\n".join(
        [
            '<section id="verdict" class="verdict"><h2>Verdict</h2>',
            f'<div class="figures">{"".join(boxes)}</div>',
            f'<p class="sentence">{html.escape(verdict.sentence)}</p>',
            f'<ul class="notes">{notes}</ul>' if notes else "",
            "</section>",
        ]
    )
