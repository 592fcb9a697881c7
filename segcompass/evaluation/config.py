"""Settings of an evaluation run and what it returns (imports nothing heavy, so `--help` is fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pandas as pd

    from segcompass.metrics import MetricSummary

EvalConvention = Literal["lisa", "rela", "both"]


@dataclass
class EvalConfig:
    """How `evaluate` scores a predictor on a data set (docs/design.md §5)."""

    convention: Literal["lisa", "rela", "both"] = "both"
    """Metric convention: lisa (empty prediction on empty GT = IoU 1), rela (gRefCOCO: N-acc/T-acc, no-target
    FN area in ΣU) or both (one pass of the predictor, scored both ways)."""
    batch_size: int = 8
    """Samples per predictor call."""
    limit: int | None = None
    """Score only the first N samples of the data set (None: all)."""
    confidence_threshold: float = 0.5
    """A slot is part of the prediction when its confidence (probability) is ≥ this."""
    mask_threshold: float = 0.5
    """Binarisation of probability slot masks."""
    img_size: int = 1024
    """Side of the head's letterbox square (longest image side → this, padded bottom/right)."""
    out_dir: str | None = None
    """Folder for the per-sample tables (Parquet + CSV) and the summary (JSON + CSV); None writes nothing."""
    name: str = ""
    """File-name stem of the results (default: the predictor's name)."""
    overwrite: bool = False
    """Replace results of the same name already in out_dir (otherwise that is an error, checked up front)."""
    checkpoint: str = ""
    """Identifier of the evaluated weights written into the protocol (e.g. the checkpoint path)."""
    step: int | None = None
    """Training step of the checkpoint written into the protocol (default: the predictor's `step`, if any)."""
    decoding: str = "greedy"
    """How responses were decoded, written into the protocol (evaluation is greedy by design)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        if self.convention not in ("lisa", "rela", "both"):
            raise ValueError(f"convention must be lisa, rela or both, got {self.convention!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be ≥ 0 or None, got {self.limit}")

    @property
    def conventions(self) -> tuple[str, ...]:
        """The conventions scored, in order."""
        return ("lisa", "rela") if self.convention == "both" else (self.convention,)


@dataclass
class EvalResult:
    """What `evaluate` returns."""

    predictor: str
    """Name of the predictor evaluated."""
    per_sample: pd.DataFrame
    """One row per sample and convention (a `convention` column): the metric fields of
    `segcompass.metrics.SampleScore`, `confident_slots`, the text, kind, target count, response and its
    length, and the predictor's per-sample extras."""
    summaries: dict[str, MetricSummary]
    """Convention → summary numbers with their protocol."""
    paths: list[Path] = field(default_factory=list)
    """Files written (empty when no out_dir was given)."""

    def summary_table(self) -> pd.DataFrame:
        """One row per convention: predictor, protocol fields and the numbers."""
        import pandas as pd

        return pd.DataFrame([{"predictor": self.predictor, **s.row()} for s in self.summaries.values()])
