"""The atom-naming report's verdict, computed from its consistency summary.

Headline: the mean held-out label AUC of the trained backbone's image atoms (all labelled atoms when none
is an image atom), beside the same labels shuffled across atoms (chance) and the random-init control's
atoms of the same modality. Whether the labels mean something is read from the CIs (atoms resampled).
"""

from __future__ import annotations

import pandas as pd

from analysis.report.verdict import Estimate, Verdict


def _estimate(summary: pd.DataFrame, model: str, modality: str, labels: str) -> tuple[Estimate, int] | None:
    if summary.empty:
        return None
    rows = summary[
        (summary["model"] == model) & (summary["modality"] == modality) & (summary["labels"] == labels)
    ]
    if rows.empty or pd.isna(rows.iloc[0]["mean_auc"]):
        return None
    r = rows.iloc[0]
    return Estimate(float(r["mean_auc"]), float(r["auc_ci_low"]), float(r["auc_ci_high"])), int(r["atoms"])


_HOW_HIGH = {"as well as": "as high as", "better than": "higher than", "worse than": "lower than"}


def _compare(a: Estimate, b: Estimate) -> str:
    if a.overlaps(b):
        return "as well as"
    return "better than" if a.value > b.value else "worse than"


def atoms_verdict(summary: pd.DataFrame) -> Verdict:
    """The verdict of an atom-naming result (`consistency_summary(results)`)."""
    models = list(dict.fromkeys(summary["model"])) if len(summary) else []
    model = "trained" if "trained" in models else (models[0] if models else "trained")
    modality = next((m for m in ("image", "all") if _estimate(summary, model, m, "own") is not None), None)
    if modality is None:
        return Verdict(
            measure=f"held-out label AUC ({model} backbone)",
            headline=Estimate(float("nan")),
            sentence="No atom could be labelled and tested on held-out documents: no verdict.",
        )
    own, n_atoms = _estimate(summary, model, modality, "own")
    shuffled = _estimate(summary, model, modality, "shuffled")
    control = _estimate(summary, "control", modality, "own") if model != "control" else None
    what = "image atoms" if modality == "image" else "labelled atoms"
    if shuffled is None:
        sentence = (
            f"{n_atoms} {what}: their labels predict where they fire on held-out documents with mean AUC "
            f"{own.text()}; no shuffled-label baseline was run (--shuffles 0)."
        )
    elif _compare(own, shuffled[0]) == "better than":
        sentence = (
            f"The labels of {n_atoms} {what} predict where they fire on held-out documents better than "
            f"chance: mean AUC {own.text()} vs shuffled labels {shuffled[0].text()}."
        )
    else:
        sentence = (
            f"No effect: the labels of {n_atoms} {what} predict where they fire on held-out documents "
            f"{_compare(own, shuffled[0])} shuffled labels — mean AUC {own.text()} vs {shuffled[0].text()}; "
            "the CIs overlap."
            if own.overlaps(shuffled[0])
            else f"The labels of {n_atoms} {what} predict where they fire worse than shuffled labels: mean "
            f"AUC {own.text()} vs {shuffled[0].text()}."
        )
    if control is None:
        sentence += " Control not run."
    else:
        sentence += (
            f" The random-init control's {control[1]} {what} score {control[0].text()}, "
            f"{_HOW_HIGH[_compare(control[0], own)]} the trained backbone's."
        )
    notes = []
    if modality == "image":
        text = _estimate(summary, model, "text", "own")
        if text is not None:
            notes.append(f"{text[1]} text atoms: mean held-out AUC {text[0].text()}.")
    return Verdict(
        measure=f"mean held-out label AUC of {what} ({model} backbone)",
        headline=own,
        sentence=sentence,
        baseline=shuffled[0] if shuffled is not None else None,
        baseline_name="shuffled labels (chance)",
        control=control[0] if control is not None else None,
        control_name=f"random-init control ({what})",
        notes=tuple(notes),
    )
