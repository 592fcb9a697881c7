"""The verdicts reports open with: their wording follows the numbers (effect, no effect, missing control),
and the page section carries the figures exactly (analysis/report/verdict.py and each feature's verdict.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from _report_check import page_verdict

from analysis.atoms.verdict import atoms_verdict
from analysis.common.stats import bootstrap_ratio_ci, bootstrap_ratio_diff_ci
from analysis.coverage.verdict import coverage_verdict
from analysis.provenance.verdict import provenance_verdict
from analysis.report.html import Section, render_html
from analysis.report.verdict import CONTROL_NOT_RUN, Estimate, Verdict, direction
from analysis.sparsity.verdict import sparsity_verdict


def test_estimate_text_direction_and_overlap() -> None:
    e = Estimate(0.78123, 0.7421, 0.8149)
    assert e.text() == "0.781 [0.742, 0.815]" and Estimate(0.5).text() == "0.500"
    assert Estimate(0.12, 0.05, 0.19).signed() == "+0.120 [+0.050, +0.190]"
    assert (
        direction(Estimate(0.1, 0.01, 0.2)) == "higher" and direction(Estimate(-0.1, -0.2, -0.01)) == "lower"
    )
    assert direction(Estimate(0.1, -0.01, 0.2)) == "none" and direction(Estimate(0.1)) == "none"
    assert e.overlaps(Estimate(0.8, 0.79, 0.9)) and not e.overlaps(Estimate(0.5, 0.49, 0.51))


def test_paired_ratio_difference_ci() -> None:
    """Resampling documents together: a constant per-document shift has a zero-width CI, an unpaired one
    does not."""
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 5, 40).astype(float)
    base = rng.random(40) * counts
    paired = bootstrap_ratio_diff_ci(base + 0.3 * counts, counts, base, counts, n_boot=200)
    assert paired.estimate == pytest.approx(0.3) and paired.high - paired.low == pytest.approx(0, abs=1e-12)
    noisy = bootstrap_ratio_diff_ci(base + 0.3 * counts, counts, rng.permutation(base), counts, n_boot=200)
    assert noisy.high - noisy.low > 0.05
    alone = bootstrap_ratio_ci(base, counts, n_boot=200)  # the same resamples as before the refactor
    assert alone.low < alone.estimate < alone.high


def _coverage_tables(gain_ci: tuple[float, float], control: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for model in ["trained", "control"] if control else ["trained"]:
        rows += [
            {"model": model, "ranking": "l0", "group": "referred", "auc": 0.6, "auc_ci_low": 0.55,
             "auc_ci_high": 0.65, "auc_gain": 0.1, "gain_ci_low": gain_ci[0], "gain_ci_high": gain_ci[1]},
            {"model": model, "ranking": "random", "group": "referred", "auc": 0.5, "auc_ci_low": 0.48,
             "auc_ci_high": 0.52, "auc_gain": 0.0, "gain_ci_low": 0.0, "gain_ci_high": 0.0},
        ]  # fmt: skip
    contrasts = pd.DataFrame(
        [{"model": "trained", "ranking": "l0", "contrast": "referred − distractor", "difference": -0.2,
          "ci_low": -0.3, "ci_high": -0.1, "documents": 9}]
    )  # fmt: skip
    return pd.DataFrame(rows), contrasts


def test_coverage_verdict_says_effect_or_no_effect_from_the_gain_ci() -> None:
    auc, contrasts = _coverage_tables((0.05, 0.15), control=True)
    v = coverage_verdict(auc, contrasts)
    assert v.sentence.startswith(
        "Referred instances are covered better than random tokens: AUC 0.600 [0.550, 0.650] vs 0.500 "
        "(gain +0.100 [+0.050, +0.150])."
    )
    assert "The random-init control also beats random tokens" in v.sentence
    assert v.notes == (
        "trained, l0: referred instances are covered less than distractor instances — AUC difference "
        "-0.200 [-0.300, -0.100].",
    )
    auc, contrasts = _coverage_tables((-0.01, 0.15), control=False)
    v = coverage_verdict(auc, contrasts)
    assert v.sentence.startswith("No effect: referred instances are covered no better than random tokens")
    assert "includes 0" in v.sentence and v.sentence.endswith("Control not run.") and v.control is None


def _sparsity_summary(instance: float, background: float) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"model": "trained", "group": g, "mean_l0": m, "l0_ci_low": m - 0.5, "l0_ci_high": m + 0.5,
             "mean_mass": m, "mass_ci_low": m - 1, "mass_ci_high": m + 1}
            for g, m in (("image_instance", instance), ("image_background", background))
        ]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("diff", "start"),
    [
        ((2.0, 1.5, 2.5), "Instance image tokens activate more atoms than background ones"),
        ((-2.0, -2.5, -1.5), "Instance image tokens activate fewer atoms than background ones"),
        ((0.2, -0.3, 0.7), "No effect: instance image tokens activate as many atoms as background ones"),
    ],
)
def test_sparsity_verdict_direction_and_overlap(diff, start) -> None:
    summary = _sparsity_summary(10 + diff[0], 10)
    contrasts = pd.DataFrame(
        [{"model": "trained", "measure": m, "contrast": "image_instance − image_background", "difference": diff[0],
          "ci_low": diff[1], "ci_high": diff[2], "documents": 5} for m in ("mean_l0", "mean_mass")]
    )  # fmt: skip
    v = sparsity_verdict(summary, contrasts)
    assert v.sentence.startswith(start) and v.sentence.endswith("Control not run.")
    overlap = "the CIs overlap" if abs(diff[0]) < 1 else "the CIs do not overlap"
    assert overlap in v.sentence and v.headline.value == 10 + diff[0] and v.baseline.value == 10


def test_sparsity_verdict_without_instance_masks() -> None:
    summary = pd.DataFrame(
        [{"model": "trained", "group": "image", "mean_l0": 3.0, "l0_ci_low": 2.0, "l0_ci_high": 4.0,
          "mean_mass": 1.0, "mass_ci_low": 0.5, "mass_ci_high": 1.5}]
    )  # fmt: skip
    v = sparsity_verdict(summary, pd.DataFrame(columns=["model", "measure"]))
    assert v.sentence.startswith("No instance masks") and v.headline == Estimate(3.0, 2.0, 4.0)


def test_atoms_and_provenance_verdicts_without_data_say_so() -> None:
    assert atoms_verdict(pd.DataFrame()).sentence.startswith("No atom could be labelled")
    v = provenance_verdict(None)
    assert v.sentence.startswith("The causal check was not run") and math.isnan(v.headline.value)


def test_rendered_verdict_carries_exact_figures_and_escapes_text() -> None:
    v = Verdict(
        measure="AUC <referred>",
        headline=Estimate(0.1 + 0.2, 0.25, 0.35),
        sentence="a < b & c",
        baseline=Estimate(0.5),
        notes=("note <1>",),
    )
    page = render_html("t", [Section("curves", "text")], verdict=v)
    parsed = page_verdict(page)
    assert parsed.values == {"headline": 0.1 + 0.2, "baseline": 0.5, "control": None}  # exact, not rounded
    assert parsed.sentence == "a < b & c" and parsed.notes == ["note <1>"]
    assert "AUC &lt;referred&gt;" in page and f'<div class="value">{CONTROL_NOT_RUN}</div>' in page
    assert page.index('id="verdict"') < page.index('id="section-0"')  # before every section


def test_coverage_verdict_notes_the_gain_by_instance_size_small_to_large() -> None:
    """The size groups are read from the table (listed small → large whatever their row order), each with
    its paired gain's CI and the direction it supports; the control gets its own line."""
    auc, contrasts = _coverage_tables((0.05, 0.15), control=True)
    sizes = []
    for model, gains in (("trained", {"large": (0.04, 0.01, 0.07), "small": (-0.1, -0.12, -0.08)}),
                         ("control", {"medium": (0.02, -0.01, 0.05)})):  # fmt: skip
        for size, (g, lo, hi) in gains.items():
            sizes.append({"model": model, "ranking": "l0", "group": f"size:{size}", "auc": 0.5 + g,
                          "auc_ci_low": 0.4, "auc_ci_high": 0.6, "auc_gain": g, "gain_ci_low": lo,
                          "gain_ci_high": hi})  # fmt: skip
    v = coverage_verdict(pd.concat([auc, pd.DataFrame(sizes)], ignore_index=True), contrasts)
    assert v.notes[:2] == (
        "trained, l0, gain over random tokens by instance size: small -0.100 [-0.120, -0.080] (worse); "
        "large +0.040 [+0.010, +0.070] (better).",
        "control, l0, gain over random tokens by instance size: medium +0.020 [-0.010, +0.050] (no different).",
    )
    assert not any("instance size" in n for n in coverage_verdict(auc, contrasts).notes)
