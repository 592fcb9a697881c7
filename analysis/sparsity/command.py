"""`segcompass-analyze sparsity`: config, run and HTML report."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.common.report_inputs import ReportInputs, load_report_saes, report_metadata, resolve_instances
from analysis.report.html import ReportFiles, Section, write_report
from analysis.sparsity.core import SparsityConfig, SparsityResult, sparsity_figure, sparsity_with_controls
from analysis.sparsity.verdict import sparsity_verdict
from sae.files import lock_output

FIGURE_TEXT = (
    "Per token: L0 (atoms active) and activation mass (sum of the codes), as box plots of a uniform sample of "
    "tokens per group, and the exact mean L0 with its CI (documents resampled). Blue: trained backbone; "
    "orange: random-init control."
)
SUMMARY_TEXT = (
    "Means over every token of a group with CIs (documents resampled); zero_l0_fraction: tokens with no "
    "active atom; distinct_atoms: atoms active on at least one token of the group."
)
CONTRAST_TEXT = "Differences of the means, paired by document (both groups resampled together), with CIs."


@dataclass(kw_only=True)
class SparsityReportConfig(SparsityConfig, ReportInputs):
    """Sparsity by token type: L0, activation mass and distinct atoms per kind of token (instance /
    background image tokens, instruction, CoT, concentration, special), with bootstrap CIs. Writes an HTML
    report and tables."""


def run_sparsity_report(cfg: SparsityReportConfig) -> tuple[SparsityResult, ReportFiles]:
    """Run the sparsity analysis (and its control) and write `<out>/sparsity.html` + tables. `--out` is
    locked (and so checked for writability) before anything is computed."""
    with lock_output(cfg.out, "sparsity report"):
        return _sparsity_report(cfg)


def _sparsity_report(cfg: SparsityReportConfig) -> tuple[SparsityResult, ReportFiles]:
    sae, control = load_report_saes(cfg)
    instances = resolve_instances(cfg, required=False)
    analysis = SparsityConfig(**{k: getattr(cfg, k) for k in SparsityConfig.__dataclass_fields__})
    result = sparsity_with_controls(
        cfg.store, sae, instances, analysis, control_store=cfg.control_store, control_sae=control
    )
    split = (
        f"Image tokens are split by the instance pixels under their cell: image_instance (at least "
        f"{cfg.instance_fraction:.0%} of the cell on instances), image_background (none), image_mixed."
        if instances is not None
        else "No instance masks: image tokens are not split."
    )
    sections = [
        Section("Sparsity by token type", f"{FIGURE_TEXT} {split}", sparsity_figure(result)),
        Section("Per token type", SUMMARY_TEXT, table=result.summary),
        Section("Instance vs background image tokens", CONTRAST_TEXT, table=result.contrasts),
        Section("Inputs", table=result.inputs),
    ]
    tables = {
        "summary": result.summary,
        "contrasts": result.contrasts,
        "samples": result.samples,
        "inputs": result.inputs,
    }
    files = write_report(
        cfg.out,
        "sparsity",
        "SegCompass SAE sparsity by token type",
        sections,
        tables,
        metadata=report_metadata(cfg, sae, control),
        verdict=sparsity_verdict(result.summary, result.contrasts),
    )
    return result, files


def sparsity_main(cfg: SparsityReportConfig) -> SparsityResult:
    """CLI entry: run, print the summary and where the report is."""
    result, files = run_sparsity_report(cfg)
    cols = ["model", "group", "tokens", "mean_l0", "l0_ci_low", "l0_ci_high", "mean_mass", "distinct_atoms"]
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(result.summary[cols].to_string(index=False))
    print(f"\n{sparsity_verdict(result.summary, result.contrasts).text()}")
    print(f"Sparsity report: {files.html.absolute()}")
    return result
