"""Summary of a per-sample table, carrying the protocol that produced it (docs/design.md §5).

gIoU = Σ IoU / N_all; cIoU = Σ I / Σ U; N-acc = TP / (TP + FN); T-acc = TN / (TN + FP); Pr@t = share of
target samples with IoU ≥ t. A number that is undefined for the run (e.g. N-acc without no-target
samples, cIoU with Σ U = 0) is None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import pandas as pd

Convention = Literal["lisa", "rela"]
CONVENTIONS: tuple[str, ...] = ("lisa", "rela")


@dataclass
class Protocol:
    """How a number was obtained; written next to every result so tables can be compared."""

    convention: Convention
    """``lisa`` or ``rela``."""
    dataset: str = ""
    """Data set name."""
    split: str = ""
    """Split."""
    unit: str = "sentence"
    """What one sample is (we always score per sentence)."""
    num_samples: int = 0
    """Samples scored."""
    decoding: str = "greedy"
    """How responses were generated (``greedy`` or ``sample(T=…)``)."""
    confidence_threshold: float = 0.5
    """Slots with sigmoid confidence ≥ this form the prediction."""
    pr_thresholds: tuple[float, ...] = (0.7, 0.8, 0.9)
    """IoU thresholds of Pr@."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else that decides the number (checkpoint, selection rule, seed, config and data hashes)."""


@dataclass
class MetricSummary:
    """Summary numbers with their protocol."""

    protocol: Protocol
    """How they were obtained."""
    giou: float | None
    """Σ IoU / N_all."""
    ciou: float | None
    """Σ I / Σ U (None when Σ U = 0)."""
    n_acc: float | None
    """TP / (TP + FN) over no-target samples."""
    t_acc: float | None
    """TN / (TN + FP) over target samples."""
    pr: dict[str, float | None]
    """"Pr@0.7" … over target samples."""
    counts: dict[str, int]
    """Samples, no-target samples, TP, FN, TN, FP."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["protocol"]["pr_thresholds"] = list(self.protocol.pr_thresholds)
        return out

    def row(self) -> dict[str, Any]:
        """One flat table row: protocol fields then the numbers."""
        p = {k: v for k, v in asdict(self.protocol).items() if k not in ("extra", "pr_thresholds")}
        return {
            **p,
            "gIoU": self.giou,
            "cIoU": self.ciou,
            "N-acc": self.n_acc,
            "T-acc": self.t_acc,
            **self.pr,
        }


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def summarise(per_sample: pd.DataFrame, protocol: Protocol) -> MetricSummary:
    """Summary of a per-sample table (as made by :class:`MetricAccumulator`)."""
    df = per_sample
    n = len(df)
    protocol = replace(protocol, num_samples=n)
    counts = {k: int((df["outcome"] == k).sum()) if n else 0 for k in ("TP", "FN", "TN", "FP")}
    targets = df[~df["no_target"]] if n else df
    pr = {
        f"Pr@{t:g}": _ratio(float((targets["iou"] >= t).sum()), len(targets)) for t in protocol.pr_thresholds
    }
    return MetricSummary(
        protocol=protocol,
        giou=_ratio(float(df["iou"].sum()) if n else 0.0, n),
        ciou=_ratio(float(df["intersection"].sum()) if n else 0.0, float(df["union"].sum()) if n else 0.0),
        n_acc=_ratio(counts["TP"], counts["TP"] + counts["FN"]),
        t_acc=_ratio(counts["TN"], counts["TN"] + counts["FP"]),
        pr=pr,
        counts={"samples": n, "no_target": int(df["no_target"].sum()) if n else 0, **counts},
    )
