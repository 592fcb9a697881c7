"""Plotly figure of a `CoverageResult`: curves with the random baseline's spread, groups, AUC per size."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from analysis.coverage.core import CoverageResult

_DASH = {"trained": "solid", "control": "dash"}
_GROUP_COLOURS = {"referred": "#d62728", "distractor": "#1f77b4", "background": "#7f7f7f"}


def _colour(i: int) -> str:
    return qualitative.Plotly[i % len(qualitative.Plotly)]


def coverage_figure(
    result: CoverageResult, title: str = "Instance coverage of the top-K % tokens"
) -> go.Figure:
    """Three panels: all-instance curves (each model and ranking, random mean ± std over seeds); referred,
    distractor and background coverage for the first ranking; AUC per instance size bucket."""
    curves, auc = result.curves, result.auc
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "all instances",
            "referred vs distractor vs background",
            "AUC by instance size",
        ),
        horizontal_spacing=0.07,
    )
    models = list(dict.fromkeys(curves["model"]))
    rankings = [r for r in dict.fromkeys(curves["ranking"]) if r != "random"]
    colour = {r: _colour(i) for i, r in enumerate([*rankings, "random"])}
    inst = curves[curves["group"] == "instances"]
    for m in models:
        for r in [*rankings, "random"]:
            d = inst[(inst["model"] == m) & (inst["ranking"] == r)].sort_values("k")
            if d.empty:
                continue
            name = f"{m} · {r}"
            if r == "random":
                upper = d["coverage"] + d["coverage_std"].fillna(0)
                lower = d["coverage"] - d["coverage_std"].fillna(0)
                fig.add_trace(
                    go.Scatter(
                        x=list(d["k"]) + list(d["k"])[::-1],
                        y=list(upper) + list(lower)[::-1],
                        fill="toself",
                        fillcolor="rgba(127,127,127,0.2)",
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                        legendgroup=name,
                    ),
                    row=1,
                    col=1,
                )
            fig.add_trace(
                go.Scatter(
                    x=d["k"],
                    y=d["coverage"],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    line={"color": colour[r], "dash": _DASH.get(m, "dot")},
                ),
                row=1,
                col=1,
            )
    first = rankings[0] if rankings else "random"
    for m in models:
        for g, c in _GROUP_COLOURS.items():
            d = curves[(curves["model"] == m) & (curves["ranking"] == first) & (curves["group"] == g)]
            if d.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=d["k"],
                    y=d["coverage"],
                    mode="lines",
                    name=f"{m} · {first} · {g}",
                    line={"color": c, "dash": _DASH.get(m, "dot")},
                ),
                row=1,
                col=2,
            )
    sizes = auc[auc["group"].str.startswith("size:")]
    order = [s for s in ("size:small", "size:medium", "size:large") if s in set(sizes["group"])]
    order += sorted(set(sizes["group"]) - set(order))
    for m, r in ((m, r) for m in models for r in [*rankings, "random"]):
        d = sizes[(sizes["model"] == m) & (sizes["ranking"] == r)].set_index("group").reindex(order)
        if d["auc"].isna().all():
            continue
        fig.add_trace(
            go.Bar(
                x=[g.removeprefix("size:") for g in order],
                y=d["auc"],
                error_y={"type": "data", "array": d["auc_std"].fillna(0)},
                name=f"{m} · {r} AUC",
                marker={"color": colour[r], "pattern": {"shape": "" if m == "trained" else "/"}},
                showlegend=True,
            ),
            row=1,
            col=3,
        )
    fig.update_xaxes(title_text="K (% of image tokens)", row=1, col=1)
    fig.update_xaxes(title_text="K (% of image tokens)", row=1, col=2)
    fig.update_xaxes(title_text="instance size", row=1, col=3)
    fig.update_yaxes(title_text="fraction of pixels covered", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(title_text="AUC", range=[0, 1], row=1, col=3)
    fig.update_layout(
        title=title,
        barmode="group",
        height=560,
        width=1350,
        template="plotly_white",
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0, "font": {"size": 11}},
        margin={"b": 150},
    )
    return fig
