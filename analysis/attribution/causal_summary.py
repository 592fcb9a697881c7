"""Summary statistics and figure of a causal check (top-attributed vs random atom removal)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy.stats import binomtest

from analysis.common.stats import bootstrap_mean_ci

METRICS = ("iou_drop", "gt_iou_drop", "objective_drop", "objective_abs_change")
"""Per-run quantities compared between top and random removal (larger = the slot changed more)."""
TITLES = {
    "iou_drop": "IoU drop vs own unablated mask",
    "gt_iou_drop": "IoU drop vs matched GT",
    "objective_drop": "slot objective drop",
    "objective_abs_change": "|slot objective change|",
}


def _sign_test(diff: np.ndarray) -> tuple[int, int, int, float]:
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    ties = int(diff.size - wins - losses)
    p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else float("nan")
    return wins, losses, ties, float(p)


def causal_summary(
    table: pd.DataFrame, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """One row per (n, metric) over the (sample, slot) pairs:

    pairs; top_mean, top_sd (over pairs) and the mean's CI (top_ci_low, top_ci_high: pairs resampled);
    random_mean and random_sd (sd over the random draws of the pair-averaged value: the seed-to-seed spread)
    and its CI over pairs (random_ci_low, random_ci_high); diff_mean = mean over pairs of (top − mean of the pair's
    random draws) with a percentile-bootstrap CI (diff_ci_low, diff_ci_high); wins / losses / ties of top
    over random and the two-sided sign-test p-value (ties dropped); noise_floor = mean of the metric over
    the unablated re-runs (variant 'none').
    """
    rows: list[dict[str, Any]] = []
    if table.empty:
        return pd.DataFrame(rows)
    keys = ["sample", "slot"]
    none = table[table["variant"] == "none"]
    for n in sorted(table.loc[table["variant"] != "none", "n"].unique()):
        at_n = table[table["n"] == n]
        top = at_n[at_n["variant"] == "top"].set_index(keys)
        rnd = at_n[at_n["variant"] == "random"]
        for metric in METRICS:
            if metric not in table or table[metric].isna().all():
                continue
            r_pair = rnd.groupby(keys)[metric].mean()
            paired = pd.DataFrame({"top": top[metric], "random": r_pair}).dropna()
            if paired.empty:
                continue
            diff = (paired["top"] - paired["random"]).to_numpy()
            boot = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
            ci = bootstrap_mean_ci(diff, **boot)
            top_ci = bootstrap_mean_ci(paired["top"].to_numpy(), **boot)
            random_ci = bootstrap_mean_ci(paired["random"].to_numpy(), **boot)
            wins, losses, ties, p = _sign_test(diff)
            per_draw = rnd.dropna(subset=[metric]).groupby("draw")[metric].mean()
            rows.append(
                {
                    "n": int(n),
                    "metric": metric,
                    "pairs": len(paired),
                    "top_mean": float(paired["top"].mean()),
                    "top_sd": float(paired["top"].std(ddof=1)) if len(paired) > 1 else 0.0,
                    "top_ci_low": top_ci.low,
                    "top_ci_high": top_ci.high,
                    "random_mean": float(paired["random"].mean()),
                    "random_sd": float(per_draw.std(ddof=1)) if len(per_draw) > 1 else 0.0,
                    "random_ci_low": random_ci.low,
                    "random_ci_high": random_ci.high,
                    "diff_mean": ci.estimate,
                    "diff_ci_low": ci.low,
                    "diff_ci_high": ci.high,
                    "wins": wins,
                    "losses": losses,
                    "ties": ties,
                    "sign_p": p,
                    "noise_floor": float(none[metric].mean()) if len(none) else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def causal_headline(summary: pd.DataFrame, metric: str = "iou_drop") -> str:
    """One sentence per n: top vs random mean drop of `metric`, the paired difference and its CI."""
    s = summary[summary["metric"] == metric] if len(summary) else summary
    if s.empty:
        return f"No {metric} comparison (no runs)."
    parts = [
        f"n={r.n}: top {r.top_mean:.3f} vs random {r.random_mean:.3f} ± {r.random_sd:.3f} "
        f"(paired diff {r.diff_mean:+.3f}, CI [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}], "
        f"{r.wins}/{r.wins + r.losses} wins, sign p={r.sign_p:.3g})"
        for r in s.itertuples()
    ]
    return f"{TITLES.get(metric, metric)} — " + "; ".join(parts) + "."


def causal_figure(
    summary: pd.DataFrame, title: str = "Causal check: top-attributed vs random atoms"
) -> go.Figure:
    """Mean drop vs number of removed atoms, top (± sd over pairs) vs random (± sd over draws), one panel
    per metric."""
    metrics = [m for m in METRICS if len(summary) and m in set(summary["metric"])]
    if not metrics:
        raise ValueError("the causal summary is empty: nothing to plot")
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[TITLES[m] for m in metrics])
    for col, metric in enumerate(metrics, start=1):
        s = summary[summary["metric"] == metric].sort_values("n")
        for variant, color in (("top", "#d62728"), ("random", "#7f7f7f")):
            fig.add_trace(
                go.Scatter(
                    x=s["n"],
                    y=s[f"{variant}_mean"],
                    error_y={"type": "data", "array": s[f"{variant}_sd"], "visible": True},
                    mode="lines+markers",
                    name=f"{variant} atoms removed",
                    line={"color": color},
                    legendgroup=variant,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(
            title_text="atoms removed (n)",
            type="log" if s["n"].max() > 10 else "linear",
            tickvals=list(s["n"]),
            row=1,
            col=col,
        )
        fig.update_yaxes(exponentformat="none", row=1, col=col)
    fig.update_layout(height=400, width=max(500, 420 * len(metrics)), template="plotly_white", title=title)
    return fig
