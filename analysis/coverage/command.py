"""`segcompass-analyze coverage`: config, run and HTML report."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.common.report_inputs import ReportInputs, load_report_saes, report_metadata, resolve_instances
from analysis.coverage.core import CoverageConfig, CoverageResult, coverage_with_controls
from analysis.coverage.plot import coverage_figure
from analysis.report.html import ReportFiles, Section, write_report
from sae.files import lock_output


@dataclass(kw_only=True)
class CoverageReportConfig(CoverageConfig, ReportInputs):
    """Instance coverage: do the top-K % most SAE-active image tokens cover the objects? Writes an HTML
    report and tables: curves over K vs a random-token baseline, AUC, referred vs distractor vs background,
    per instance size, and the same for a random-init control when given."""


def _headline(auc: pd.DataFrame) -> str:
    """One sentence per model: AUC of each ranking vs the random baseline, referred vs distractor."""
    lines = []
    for m in dict.fromkeys(auc["model"]):
        a = auc[(auc["model"] == m)].set_index(["ranking", "group"])["auc"]
        rankings = [r for r in dict.fromkeys(auc.loc[auc["model"] == m, "ranking"]) if r != "random"]
        parts = [f"{r} {a[(r, 'instances')]:.3f}" for r in rankings]
        text = f"{m}: coverage AUC {', '.join(parts)} vs random {a[('random', 'instances')]:.3f}"
        if rankings and (rankings[0], "referred") in a and (rankings[0], "distractor") in a:
            r0 = rankings[0]
            text += f"; {r0}: referred {a[(r0, 'referred')]:.3f} vs distractor {a[(r0, 'distractor')]:.3f}"
        lines.append(text + ".")
    return " ".join(lines)


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
    auc_main = result.auc[result.auc["group"].isin(["instances", "referred", "distractor", "background"])]
    sections = [
        Section("Coverage curves", _headline(result.auc), coverage_figure(result), auc_main),
        Section("Area under the curves, all groups", table=result.auc),
        Section(
            "Curves (all instances)", table=result.curves[result.curves["group"] == "instances"], max_rows=200
        ),
        Section("Inputs", table=result.inputs),
    ]
    tables = {"curves": result.curves, "auc": result.auc, "inputs": result.inputs}
    files = write_report(
        cfg.out,
        "coverage",
        "SegCompass instance coverage",
        sections,
        tables,
        metadata=report_metadata(cfg, sae, control),
    )
    return result, files


def coverage_main(cfg: CoverageReportConfig) -> CoverageResult:
    """CLI entry: run, print the AUC table and where the report is."""
    result, files = run_coverage_report(cfg)
    table = result.auc[result.auc["group"].isin(["instances", "referred", "distractor", "background"])]
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(table.to_string(index=False))
    print(f"\n{_headline(result.auc)}\nCoverage report: {files.html.absolute()}")
    return result
