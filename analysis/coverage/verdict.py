"""The coverage report's verdict, computed from its AUC and contrast tables.

Headline: the coverage AUC of the referred instances (all instances when the data has no referred ones) on
the trained backbone, for the first ranking of the table (the order of `--rank-by`), beside the random
tokens of the same documents and the random-init control. Whether it beats random tokens is read from the
CI of its paired gain; the notes give the other rankings, the gain by instance size (trained backbone and
control, first ranking) and referred − distractor.
"""

from __future__ import annotations

import pandas as pd

from analysis.report.verdict import Estimate, Verdict, direction

_GROUP_NAME = {"referred": "referred instances", "instances": "instances"}
_SIZES = ("small", "medium", "large")
"""The coverage table's `size:*` groups (`analysis/coverage/core.py`), in the order the notes list them."""


def _row(auc: pd.DataFrame, model: str, ranking: str, group: str) -> pd.Series | None:
    rows = auc[(auc["model"] == model) & (auc["ranking"] == ranking) & (auc["group"] == group)]
    return rows.iloc[0] if len(rows) else None


def _auc(row: pd.Series) -> Estimate:
    return Estimate(float(row["auc"]), float(row["auc_ci_low"]), float(row["auc_ci_high"]))


def _gain(row: pd.Series) -> Estimate:
    return Estimate(float(row["auc_gain"]), float(row["gain_ci_low"]), float(row["gain_ci_high"]))


def _against_random(row: pd.Series) -> str:
    """ "better than" / "worse than" / "no better than" random tokens, from the gain's CI."""
    return {"higher": "better than", "lower": "worse than", "none": "no better than"}[direction(_gain(row))]


def _control_clause(control: pd.Series | None) -> str:
    if control is None:
        return "Control not run."
    gain = _gain(control)
    how = {
        "higher": "also beats random tokens, so part of the effect needs no trained backbone",
        "lower": "is below random tokens",
        "none": "is indistinguishable from random tokens",
    }[direction(gain)]
    return f"The random-init control {how}: AUC {_auc(control).text()} (gain {gain.signed()})."


def _size_note(auc: pd.DataFrame, model: str, ranking: str) -> str | None:
    """One line with the gain over random tokens per instance-size group (`size:*`, small to large), or None
    when the table has no size groups."""
    rows = auc[(auc["model"] == model) & (auc["ranking"] == ranking)].set_index("group")
    parts = []
    for size in (s for s in _SIZES if f"size:{s}" in rows.index):
        row = rows.loc[f"size:{size}"]
        gain = Estimate(float(row["auc_gain"]), float(row["gain_ci_low"]), float(row["gain_ci_high"]))
        word = {"higher": "better", "lower": "worse", "none": "no different"}[direction(gain)]
        parts.append(f"{size} {gain.signed()} ({word})")
    if not parts:
        return None
    return f"{model}, {ranking}, gain over random tokens by instance size: " + "; ".join(parts) + "."


def coverage_verdict(auc: pd.DataFrame, contrasts: pd.DataFrame) -> Verdict:
    """The verdict of a coverage result (`CoverageResult.auc`, `.contrasts`)."""
    trained = auc[auc["model"] == "trained"]
    if trained.empty:
        trained = auc[auc["model"] == auc["model"].iloc[0]]
    model = str(trained["model"].iloc[0])
    rankings = [r for r in dict.fromkeys(trained["ranking"]) if r != "random"]
    group = "referred" if "referred" in set(trained["group"]) else "instances"
    ranking = rankings[0]
    head = _row(auc, model, ranking, group)
    rand = _row(auc, model, "random", group)
    control = _row(auc, "control", ranking, group) if model != "control" else None
    what = _GROUP_NAME[group]
    gain = _gain(head)
    if direction(gain) == "none":
        first = (
            f"No effect: {what} are covered no better than random tokens — AUC {_auc(head).text()} vs "
            f"{rand['auc']:.3f}; the gain's CI {gain.signed()} includes 0."
        )
    else:
        first = (
            f"{what.capitalize()} are covered {_against_random(head)} random tokens: AUC {_auc(head).text()} "
            f"vs {rand['auc']:.3f} (gain {gain.signed()})."
        )
    notes = []
    for r in rankings[1:]:
        other = _row(auc, model, r, group)
        if other is not None:
            notes.append(
                f"Ranking by {r}: AUC {_auc(other).text()}, gain over random tokens {_gain(other).signed()} "
                f"({_against_random(other)} random)."
            )
    for m in dict.fromkeys((model, "control")):
        note = _size_note(auc, m, ranking)
        if note is not None:
            notes.append(note)
    for m in dict.fromkeys(contrasts["model"]) if len(contrasts) else []:
        c = contrasts[(contrasts["model"] == m) & (contrasts["ranking"] == ranking)]
        for row in c.itertuples():
            diff = Estimate(row.difference, row.ci_low, row.ci_high)
            how = {"higher": "more than", "lower": "less than", "none": "no differently from"}[
                direction(diff)
            ]
            a, b = row.contrast.split(" − ")
            notes.append(
                f"{m}, {ranking}: {a} instances are covered {how} {b} instances — AUC difference "
                f"{diff.signed()}."
            )
    return Verdict(
        measure=f"coverage AUC of {what} ({model} backbone, tokens ranked by {ranking})",
        headline=_auc(head),
        sentence=f"{first} {_control_clause(control)}",
        baseline=_auc(rand),
        baseline_name="random tokens (same budget)",
        control=_auc(control) if control is not None else None,
        control_name=f"random-init control ({ranking})",
        notes=tuple(notes),
    )
