"""The sparsity report's verdict, computed from its summary and contrast tables.

Headline: the trained backbone's mean L0 (active atoms) on instance image tokens beside background image
tokens and the random-init control's instance tokens; the sentence reads the direction from the CI of the
paired difference (documents resampled) and says whether the two CIs overlap. The paper reports instance >
background. Without instance masks the image tokens are not split and the verdict says so.
"""

from __future__ import annotations

import pandas as pd

from analysis.report.verdict import Estimate, Verdict, direction

_MEASURES = {"mean_l0": ("l0", "mean L0 (active atoms)"), "mean_mass": ("mass", "mean activation mass")}


def _estimate(summary: pd.DataFrame, model: str, group: str, measure: str) -> Estimate | None:
    rows = summary[(summary["model"] == model) & (summary["group"] == group)]
    if rows.empty:
        return None
    prefix = _MEASURES[measure][0]
    r = rows.iloc[0]
    return Estimate(float(r[measure]), float(r[f"{prefix}_ci_low"]), float(r[f"{prefix}_ci_high"]))


def _difference(contrasts: pd.DataFrame, model: str, measure: str) -> Estimate | None:
    rows = contrasts[(contrasts["model"] == model) & (contrasts["measure"] == measure)]
    if rows.empty:
        return None
    r = rows.iloc[0]
    return Estimate(float(r["difference"]), float(r["ci_low"]), float(r["ci_high"]))


def _comparison(
    summary: pd.DataFrame, contrasts: pd.DataFrame, model: str, measure: str
) -> tuple[str, str] | None:
    """(direction of instance − background, the figures) for one model and measure; None without both
    groups."""
    inst = _estimate(summary, model, "image_instance", measure)
    back = _estimate(summary, model, "image_background", measure)
    diff = _difference(contrasts, model, measure)
    if inst is None or back is None or diff is None:
        return None
    overlap = "the CIs overlap" if inst.overlaps(back) else "the CIs do not overlap"
    figures = f"{inst.text()} vs {back.text()}; difference {diff.signed()}, {overlap}"
    return direction(diff), figures


def sparsity_verdict(summary: pd.DataFrame, contrasts: pd.DataFrame) -> Verdict:
    """The verdict of a sparsity result (`SparsityResult.summary`, `.contrasts`)."""
    models = list(dict.fromkeys(summary["model"]))
    model = "trained" if "trained" in models else models[0]
    has_control = "control" in models and model != "control"
    cmp = _comparison(summary, contrasts, model, "mean_l0")
    if cmp is None:
        head = _estimate(summary, model, "image", "mean_l0") or Estimate(float(summary["mean_l0"].iloc[0]))
        return Verdict(
            measure=f"mean L0 of image tokens ({model} backbone)",
            headline=head,
            sentence=(
                "No instance masks (or no instance and background tokens): image tokens could not be split, "
                "so instance vs background sparsity is not compared."
            ),
            baseline=None,
            control=_estimate(summary, "control", "image", "mean_l0") if has_control else None,
        )
    how, figures = cmp
    if how == "none":
        sentence = f"No effect: instance image tokens activate as many atoms as background ones — {figures}."
    else:
        more = {"higher": "more", "lower": "fewer"}[how]
        sentence = f"Instance image tokens activate {more} atoms than background ones: mean L0 {figures}."
    notes = []
    mass = _comparison(summary, contrasts, model, "mean_mass")
    if mass is not None:
        word = {"higher": "higher than", "lower": "lower than", "none": "no different from"}[mass[0]]
        notes.append(f"Activation mass on instance tokens is {word} on background tokens: {mass[1]}.")
    if has_control:
        ctrl = _comparison(summary, contrasts, "control", "mean_l0")
        if ctrl is not None:
            word = {"higher": "more atoms", "lower": "fewer atoms", "none": "no difference"}[ctrl[0]]
            sentence += f" Random-init control: {word} on instance tokens — mean L0 {ctrl[1]}."
    else:
        sentence += " Control not run."
    notes.append("The paper reports instance > background.")
    return Verdict(
        measure=f"mean L0 of instance image tokens ({model} backbone)",
        headline=_estimate(summary, model, "image_instance", "mean_l0"),
        sentence=sentence,
        baseline=_estimate(summary, model, "image_background", "mean_l0"),
        baseline_name="background image tokens",
        control=_estimate(summary, "control", "image_instance", "mean_l0") if has_control else None,
        control_name="random-init control (instance tokens)",
        notes=tuple(notes),
    )
