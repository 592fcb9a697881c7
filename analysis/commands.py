"""`segcompass-analyze coverage` and `segcompass-analyze sparsity`: configs, runs and their HTML reports."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.common.inputs import AnalysisInputError, LoadedSAE, load_sae, open_store
from analysis.common.instances import InstanceIndex
from analysis.coverage.core import CoverageConfig, CoverageResult, coverage_with_controls
from analysis.coverage.plot import coverage_figure
from analysis.report.html import ReportFiles, Section, write_report
from analysis.sparsity.core import SparsityConfig, SparsityResult, sparsity_figure, sparsity_with_controls
from sae.files import lock_output

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class _Inputs:
    """Paths shared by the report commands."""

    sae: str
    """Folder of the SAE (sae-lens format, e.g. written by `segcompass-sae train`)."""
    store: str
    """Activation store the SAE reads (`segcompass-sae capture`)."""
    out: str = "runs/analysis"
    """Folder for the HTML report and its tables (CSV, Parquet)."""
    control_store: str | None = None
    """Control: a store captured from the random-init backbone (docs/design.md §9)."""
    control_sae: str | None = None
    """Control: the SAE trained on `control_store`."""
    corpus: str | None = None
    """Instance masks: the image–text corpus folder (default: the store's data folder when it has one)."""
    coco: str | None = None
    """Instance masks: a COCO instances.json (real data sets), images keyed by file name."""
    file_map: str | None = None
    """With --coco: JSON object source_id → image file name (default: file name or its stem)."""
    device: str = "cpu"
    """Device the SAE runs on."""


@dataclass(kw_only=True)
class CoverageReportConfig(CoverageConfig, _Inputs):
    """Instance coverage: do the top-K % most SAE-active image tokens cover the objects? Writes an HTML
    report and tables: curves over K vs a random-token baseline, AUC, referred vs distractor vs background,
    per instance size, and the same for a random-init control when given."""


@dataclass(kw_only=True)
class SparsityReportConfig(SparsityConfig, _Inputs):
    """Sparsity by token type: L0, activation mass and distinct atoms per kind of token (instance /
    background image tokens, instruction, CoT, concentration, special), with bootstrap CIs. Writes an HTML
    report and tables."""


def resolve_instances(cfg: _Inputs, required: bool) -> InstanceIndex | None:
    """The instance masks named by --corpus / --coco, else the store's own corpus, else None (or an error)."""
    if cfg.corpus and cfg.coco:
        raise AnalysisInputError("give instance masks with --corpus or --coco, not both")
    if cfg.coco:
        return InstanceIndex.from_coco(cfg.coco, cfg.file_map)
    if cfg.corpus:
        return InstanceIndex.from_corpus(cfg.corpus)
    data_path = open_store(cfg.store).manifest.metadata.data.get("path")
    if data_path and (Path(data_path) / "corpus.jsonl").exists():
        logger.info("instance masks from the store's corpus %s", data_path)
        return InstanceIndex.from_corpus(data_path)
    if required:
        raise AnalysisInputError(
            f"no instance masks: the store's data ({data_path}) has no corpus.jsonl; pass --corpus or --coco"
        )
    return None


def _load(cfg: _Inputs) -> tuple[LoadedSAE, LoadedSAE | None]:
    for name in ("sae", "store"):
        if not getattr(cfg, name):
            raise AnalysisInputError(f"--{name} is required")
    if (cfg.control_store is None) != (cfg.control_sae is None):
        raise AnalysisInputError("the control needs both --control-store and --control-sae")
    control = load_sae(cfg.control_sae, cfg.device) if cfg.control_sae else None
    return load_sae(cfg.sae, cfg.device), control


def _metadata(cfg: Any, sae: LoadedSAE, control: LoadedSAE | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"config": asdict(cfg)}
    for key, store, loaded in (("trained", cfg.store, sae), ("control", cfg.control_store, control)):
        if store is None or loaded is None:
            continue
        m = open_store(store).manifest
        meta[key] = {
            "store": str(store),
            "store_id": m.store_id,
            "backbone": m.backbone,
            "hook_layer": m.hook_layer,
            "d_in": m.metadata.d_in,
            "documents": m.num_documents,
            "tokens": m.num_tokens,
            "sae": loaded.name,
            "d_sae": loaded.d_sae,
            "sae_metadata": loaded.metadata,
        }
    return meta


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
    sae, control = _load(cfg)
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
        metadata=_metadata(cfg, sae, control),
    )
    return result, files


def run_sparsity_report(cfg: SparsityReportConfig) -> tuple[SparsityResult, ReportFiles]:
    """Run the sparsity analysis (and its control) and write `<out>/sparsity.html` + tables. `--out` is
    locked (and so checked for writability) before anything is computed."""
    with lock_output(cfg.out, "sparsity report"):
        return _sparsity_report(cfg)


def _sparsity_report(cfg: SparsityReportConfig) -> tuple[SparsityResult, ReportFiles]:
    sae, control = _load(cfg)
    instances = resolve_instances(cfg, required=False)
    analysis = SparsityConfig(**{k: getattr(cfg, k) for k in SparsityConfig.__dataclass_fields__})
    result = sparsity_with_controls(
        cfg.store, sae, instances, analysis, control_store=cfg.control_store, control_sae=control
    )
    text = (
        "Means over every token; CIs by resampling documents. Image tokens are split by the instance pixels "
        "under their cell."
        if instances is not None
        else "No instance masks: image tokens are not split."
    )
    sections = [
        Section("Sparsity by token type", text, sparsity_figure(result), result.summary),
        Section("Inputs", table=result.inputs),
    ]
    tables = {"summary": result.summary, "samples": result.samples, "inputs": result.inputs}
    files = write_report(
        cfg.out,
        "sparsity",
        "SegCompass SAE sparsity by token type",
        sections,
        tables,
        metadata=_metadata(cfg, sae, control),
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


def sparsity_main(cfg: SparsityReportConfig) -> SparsityResult:
    """CLI entry: run, print the summary and where the report is."""
    result, files = run_sparsity_report(cfg)
    cols = ["model", "group", "tokens", "mean_l0", "l0_ci_low", "l0_ci_high", "mean_mass", "distinct_atoms"]
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(result.summary[cols].to_string(index=False))
    print(f"\nSparsity report: {files.html.absolute()}")
    return result
