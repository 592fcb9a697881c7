"""Evaluation metrics (docs/design.md §5): LISA and gRefCOCO/ReLA conventions, per-sample tables, summaries.

::

    acc = MetricAccumulator(MetricsConfig(convention="rela"))
    for s, out in ...:
        acc.add_slots(s.sample_id, out.masks, out.confidence, s.masks_or_empty, no_target=s.no_target)
    write_results("runs/eval", acc.per_sample(), acc.summary(dataset="grefcoco", split="val"))
"""

from segcompass.metrics.conventions import (
    MetricAccumulator,
    MetricsConfig,
    SampleScore,
    gt_union,
    prediction_mask,
    score_sample,
    split_label_map,
)
from segcompass.metrics.summary import CONVENTIONS, Convention, MetricSummary, Protocol, summarise
from segcompass.metrics.writer import ResultPaths, atomic_write, write_results

__all__ = [
    "CONVENTIONS",
    "Convention",
    "MetricAccumulator",
    "MetricSummary",
    "MetricsConfig",
    "Protocol",
    "ResultPaths",
    "SampleScore",
    "atomic_write",
    "gt_union",
    "prediction_mask",
    "score_sample",
    "split_label_map",
    "summarise",
    "write_results",
]
