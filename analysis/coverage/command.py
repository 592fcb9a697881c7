"""`segcompass-analyze coverage`: config, run and HTML report."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.common.report_inputs import ReportInputs, load_report_saes, report_metadata, resolve_instances
from analysis.coverage.core import CoverageConfig, CoverageResult, coverage_with_controls
from analysis.coverage.plot import coverage_figure
from analysis.coverage.verdict import coverage_verdict
from analysis.report.html import ReportFiles, Section, write_report
from sae.files import lock_output


@dataclass(kw_only=True)
class CoverageReportConfig(CoverageConfig, ReportInputs):
    """Instance coverage: do the top-K % most SAE-active image tokens cover the objects? Writes an HTML
    report and tables: curves over K vs a random-token baseline, AUC, referred vs distractor vs background,
    per instance size, and the same for a random-init control when given."""


FIGURE_TEXT = (
    "Share of each instance's pixels covered by the image tokens where the SAE is most active (top K % of "
    "an image's tokens), averaged over instances. Left: all instances, every ranking beside the same budget "
    "of random tokens (grey band: ± sd over the random seeds). Middle: referred instances (the ones the "
    "instruction names), distractors and background pixels for the first ranking. Right: area under the "
    "curve by instance size. Solid lines: trained backbone; dashed: random-init control."
)
AUC_TEXT = (
    "Area under coverage vs K/100 (random tokens ≈ 0.5). CIs resample documents; auc_gain is the AUC minus "
    "that of random tokens on the same documents, with its paired CI; auc_std is the random tokens' spread "
    "over seeds."
)
CONTRAST_TEXT = "Difference of the AUCs of two groups of instances, paired by document, with its CI."
_GROUP_ORDER = ["referred", "distractor", "instances", "background"]
PRINTED_COLUMNS = [
    "model", "ranking", "group", "auc", "auc_ci_low", "auc_ci_high", "auc_gain", "gain_ci_low", "gain_ci_high"
]  # fmt: skip
"""The AUC table's columns the command prints (the files hold every column)."""


def auc_table(auc: pd.DataFrame) -> pd.DataFrame:
    """The AUC table in reading order: model, then referred / distractor / all / background, then sizes."""
    rank = {g: i for i, g in enumerate(_GROUP_ORDER)}
    key = auc["group"].map(lambda g: rank.get(g, len(rank)))
    models = {m: i for i, m in enumerate(dict.fromkeys(auc["model"]))}
    order = pd.DataFrame({"m": auc["model"].map(models), "g": key, "name": auc["group"]}, index=auc.index)
    return auc.loc[order.sort_values(["m", "g", "name"], kind="stable").index].reset_index(drop=True)


def run_coverage_report(cfg: CoverageReportConfig) -> tuple[CoverageResult, ReportFiles]:
    """Run the coverage analysis (and its control) and write `<out>/coverage.html` + tables. `--out` is
    locked (and so checked for writability) before anything is computed."""
    with lock_output(cfg.out, "coverage report"):
        return _coverage_report(cfg)


def _coverage_report(cfg: CoverageReportConfig) -> tuple[CoverageResult, ReportFiles]:
    sae, control = load_report_saes(cfg)
    instances = resolve_instances(cfg, required=True)
    analysis = CoverageConfig(**{k: getattr(cfg, k) for k in CoverageConfig.__dataclass_fields__})
    result = coverage_with_controls(
        cfg.store, sae, instances, analysis, control_store=cfg.control_store, control_sae=control
    )
    sections = [
        Section("Coverage curves", FIGURE_TEXT, coverage_figure(result)),
        Section("Area under the curves", AUC_TEXT, table=auc_table(result.auc), max_rows=200),
        Section("Referred vs distractor instances", CONTRAST_TEXT, table=result.contrasts),
        Section("Curve points", table=result.curves, max_rows=1000, collapsed=True),
        Section("Inputs", table=result.inputs),
    ]
    tables = {
        "curves": result.curves,
        "auc": result.auc,
        "contrasts": result.contrasts,
        "inputs": result.inputs,
    }
    files = write_report(
        cfg.out,
        "coverage",
        "SegCompass instance coverage",
        sections,
        tables,
        metadata=report_metadata(cfg, sae, control),
        verdict=coverage_verdict(result.auc, result.contrasts),
    )
    return result, files


def coverage_main(cfg: CoverageReportConfig) -> CoverageResult:
    """CLI entry: run, print the AUC table and where the report is."""
    result, files = run_coverage_report(cfg)
    table = auc_table(result.auc)
    table = table.loc[table["group"].isin(_GROUP_ORDER), PRINTED_COLUMNS]
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(table.to_string(index=False))
    print(
        f"\n{coverage_verdict(result.auc, result.contrasts).text()}\nCoverage report: {files.html.absolute()}"
    )
    return result
