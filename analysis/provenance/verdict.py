"""The provenance report's verdict, computed from its causal-check summary.

Headline: how much a slot's IoU against its matched ground truth drops when its top-attributed atoms are
removed from the support (the drop against its own unablated mask when no ground truth was given), for
the largest number of atoms removed, beside removing as many random atoms. Whether the attributed atoms
matter is read from the CI of the paired difference (pairs resampled). There is no random-init control in
this report; without a causal check the verdict says the attributions are untested.
"""

from __future__ import annotations

import pandas as pd

from analysis.attribution.causal_summary import TITLES
from analysis.report.verdict import Estimate, Verdict, direction

HEADLINE_METRICS = ("gt_iou_drop", "iou_drop")
"""The causal check's metric the verdict reads, the first present."""


def provenance_verdict(summary: pd.DataFrame | None) -> Verdict:
    """The verdict of a provenance report from its causal summary (`causal_summary`; None: not run)."""
    s = summary if summary is not None else pd.DataFrame()
    metric = next((m for m in HEADLINE_METRICS if len(s) and m in set(s["metric"])), None)
    if metric is None:
        return Verdict(
            measure="causal check",
            headline=Estimate(float("nan")),
            sentence=(
                "The causal check was not run, so the attributions below are not tested: nothing says "
                "yet that the atoms ranked first matter to the slot."
            ),
            baseline=None,
            control=None,
            control_name="random-init control",
        )
    rows = s[s["metric"] == metric].sort_values("n")
    r = rows.iloc[-1]
    top = Estimate(float(r["top_mean"]), float(r["top_ci_low"]), float(r["top_ci_high"]))
    rnd = Estimate(float(r["random_mean"]), float(r["random_ci_low"]), float(r["random_ci_high"]))
    diff = Estimate(float(r["diff_mean"]), float(r["diff_ci_low"]), float(r["diff_ci_high"]))
    what = "IoU against the ground truth" if metric == "gt_iou_drop" else "IoU against its own mask"
    n, pairs = int(r["n"]), int(r["pairs"])
    figures = f"drop {top.text()} vs {rnd.text()}; paired difference {diff.signed()} over {pairs} (sample, slot) pairs"
    how = direction(diff)
    if how == "higher":
        sentence = (
            f"Removing a slot's top {n} attributed atoms lowers its {what} more than removing {n} random "
            f"atoms: {figures}."
        )
    elif how == "lower":
        sentence = (
            f"Removing a slot's top {n} attributed atoms lowers its {what} less than removing {n} random "
            f"atoms: {figures}."
        )
    else:
        sentence = (
            f"No effect: removing a slot's top {n} attributed atoms lowers its {what} no more than removing "
            f"{n} random atoms — {figures}; the CI includes 0."
        )
    notes = [
        f"{n_other} atom{'s' if n_other != 1 else ''} removed: paired difference "
        f"{Estimate(o.diff_mean, o.diff_ci_low, o.diff_ci_high).signed()} "
        f"(top {o.top_mean:.3f} vs random {o.random_mean:.3f})."
        for o in rows.iloc[:-1].itertuples()
        for n_other in [int(o.n)]
    ]
    return Verdict(
        measure=f"{TITLES[metric]} with the top {n} attributed atoms removed",
        headline=top,
        sentence=sentence + " Control not run.",
        baseline=rnd,
        baseline_name=f"{n} random atoms removed",
        control=None,
        notes=tuple(notes),
    )
