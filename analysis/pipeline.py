"""The default pipeline on the built-in world (what `./dev.sh run` runs):

    synthetic corpus → the staged tiny VLM (`stack:qwen2_5_vl`) → capture → SAE training → coverage + sparsity reports

with the docs/design.md §9 controls beside every number: the random-token baseline (inside the coverage
analysis) and the same capture → SAE → analysis on a random-init backbone. Every stage caches its output
under `--out` as a cached stage (`segcompass/artifacts/`), keyed by its settings, and a re-run reuses it (an
interrupted capture or SAE run continues).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.coverage.command import CoverageReportConfig, run_coverage_report
from analysis.coverage.verdict import coverage_verdict
from analysis.report.verdict import Verdict
from analysis.sparsity.command import SparsityReportConfig, run_sparsity_report
from analysis.sparsity.verdict import sparsity_verdict
from segcompass.artifacts import (
    TINY_SAE_ARCHITECTURE,
    TINY_SAE_DEAD_WINDOW,
    TINY_SAE_EPOCHS,
    TINY_SAE_K,
    SaeConfig,
    activation_store,
    backbone_key,
    trained_sae,
    world_corpus,
)
from segcompass.artifacts.legacy import pipeline_folders
from segcompass.backbones import DEFAULT_BACKBONE, DEFAULT_CONTROL, Backbone, resolve_backbone
from segcompass.warmup import ensure_warm_backbone
from segcompass.world import WorldConfig

logger = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """Run the default SegCompass pipeline on the synthetic world: corpus → backbone → capture → SAE →
    coverage and sparsity reports, beside a random-init control."""

    out: str = "runs/default"
    """Folder for every stage's output; a re-run reuses what is cached there."""
    backbone: str = DEFAULT_BACKBONE
    """`stack:<family>` (the staged tiny VLM pretrained on the world, committed with the code), `warm:<family>`
    (the earlier warm-up, trained once and cached), `tiny:<family>` (random weights), a local checkpoint
    folder or a hub id."""
    control_backbone: str = DEFAULT_CONTROL
    """The random-init control run through the same stages (`stack-init:<family>`: the stack's architecture
    and image size at random init); empty to skip it."""
    sae_documents: int = 400
    """Synthetic image–text documents (train split, scene descriptions) the SAEs are trained on."""
    analysis_documents: int = 150
    """Held-out documents (val split, referring instructions) the analyses read."""
    instruction_first: bool = True
    """Put the instruction before the image in the analysis prompts, so image tokens can depend on it."""
    sae_preset: str = "tiny"
    """SAE preset of `segcompass-sae train` (tiny: 2048 atoms, activation normalisation)."""
    sae_architecture: str = TINY_SAE_ARCHITECTURE
    """SAE architecture (`segcompass-sae train --architecture`): batchtopk keeps the world's words far better
    than standard L1 at this budget and still has a per-token L0."""
    sae_k: float = TINY_SAE_K
    """Active atoms per token for topk / batchtopk."""
    sae_epochs: float = TINY_SAE_EPOCHS
    """Passes over the SAE training tokens."""
    batch_size: int = 8
    """Documents per capture forward."""
    seed: int = 0
    """Seed of the world, the tiny backbones and the SAE."""


@dataclass
class PipelineResult:
    """Where everything went and the headline tables."""

    coverage_auc: pd.DataFrame
    """Coverage AUC per model (trained / control), ranking (l0, mass, random) and group."""
    sparsity: pd.DataFrame
    """L0, activation mass and distinct atoms per model and token group, with bootstrap CIs."""
    reports: dict[str, Path]
    """Report name → HTML file."""
    coverage_contrasts: pd.DataFrame
    """Referred − distractor coverage AUC per model and ranking, with its paired CI."""
    sparsity_contrasts: pd.DataFrame
    """Instance − background image tokens' mean L0 and mass per model, with its paired CI."""

    @property
    def verdicts(self) -> dict[str, Verdict]:
        """The coverage and sparsity reports' verdicts (the same text the HTML reports open with)."""
        return {
            "coverage": coverage_verdict(self.coverage_auc, self.coverage_contrasts),
            "sparsity": sparsity_verdict(self.sparsity, self.sparsity_contrasts),
        }


def _sae_config(cfg: PipelineConfig) -> SaeConfig:
    return SaeConfig(
        preset=cfg.sae_preset,
        architecture=cfg.sae_architecture,
        k=cfg.sae_k,
        epochs=cfg.sae_epochs,
        dead_feature_window=TINY_SAE_DEAD_WINDOW,
        seed=cfg.seed,
    )


def _model_stages(
    cfg: PipelineConfig,
    out: Path,
    world: WorldConfig,
    spec: str,
    backbone: Backbone,
    corpora: dict[str, Path],
) -> tuple[Path, Path]:
    """(SAE, analysis store) of one backbone: capture the train corpus → train the SAE; capture the
    analysis corpus. Each is a cached stage keyed by its settings (a finished folder of the previous
    layout is used as it is)."""
    sae_cfg = _sae_config(cfg)
    old = pipeline_folders(
        out, world, spec, backbone_key(spec, backbone), seed=cfg.seed, sae_documents=cfg.sae_documents,
        analysis_documents=cfg.analysis_documents, instruction_first=cfg.instruction_first,
        sae_recipe=(sae_cfg.preset, sae_cfg.architecture, sae_cfg.k, sae_cfg.epochs, sae_cfg.dead_feature_window),
    )  # fmt: skip
    capture = {"batch_size": cfg.batch_size, "seed": cfg.seed}
    train_store = activation_store(
        backbone, spec, corpora["train"], out, legacy=old["train_store"], **capture
    )
    sae = trained_sae(train_store, out, sae_cfg, legacy=old["sae"])
    analysis_store = activation_store(
        backbone, spec, corpora["val"], out, text_column="instruction", image_first=not cfg.instruction_first,
        legacy=old["analysis_store"], **capture,
    )  # fmt: skip
    return sae, analysis_store


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    """Run (or reuse) every stage and write the coverage and sparsity reports under `<out>/reports`."""
    out = Path(cfg.out)
    world = WorldConfig(seed=cfg.seed)
    corpora = {
        "train": world_corpus(out, world, "train", cfg.sae_documents),
        "val": world_corpus(out, world, "val", cfg.analysis_documents),
    }
    models = {"trained": cfg.backbone}
    if cfg.control_backbone:
        models["control"] = cfg.control_backbone
    stores, saes = {}, {}
    for role, spec in models.items():
        ensure_warm_backbone(spec, seed=cfg.seed)  # a `warm:` backbone is built here if missing (logged)
        backbone = resolve_backbone(spec, seed=cfg.seed)
        logger.info(
            "%s backbone %s: %d layers, d=%d, hook layer %d",
            role,
            spec,
            backbone.num_layers,
            backbone.hidden_size,
            backbone.hook_layer,
        )
        saes[role], stores[role] = _model_stages(cfg, out, world, spec, backbone, corpora)
    control = (
        {"control_store": str(stores["control"]), "control_sae": str(saes["control"])}
        if "control" in stores
        else {}
    )
    common = {
        "store": str(stores["trained"]),
        "sae": str(saes["trained"]),
        "out": str(out / "reports"),
        "corpus": str(corpora["val"]),
        **control,
    }
    coverage, coverage_files = run_coverage_report(CoverageReportConfig(**common, progress=False))
    sparsity, sparsity_files = run_sparsity_report(SparsityReportConfig(**common, progress=False))
    return PipelineResult(
        coverage_auc=coverage.auc,
        sparsity=sparsity.summary,
        reports={"coverage": coverage_files.html, "sparsity": sparsity_files.html},
        coverage_contrasts=coverage.contrasts,
        sparsity_contrasts=sparsity.contrasts,
    )


_AUC_GROUPS = ["referred", "distractor", "instances"]
_MODELS = {"trained": 0, "control": 1}
_RANKINGS = {"l0": 0, "mass": 1, "random": 2}


def auc_summary(auc: pd.DataFrame) -> pd.DataFrame:
    """The coverage AUCs the pipeline prints: one row per model and ranking (random tokens last), one column
    per group of instances, each "AUC [CI]"."""
    rows = auc[auc["group"].isin(_AUC_GROUPS)]
    cell = rows.apply(lambda r: f"{r['auc']:.3f} [{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}]", axis=1)
    table = rows.assign(cell=cell).pivot(index=["model", "ranking"], columns="group", values="cell")
    table = table[[g for g in _AUC_GROUPS if g in table.columns]].reset_index()
    order = table["model"].map(_MODELS).fillna(len(_MODELS)) * 10 + table["ranking"].map(_RANKINGS).fillna(9)
    table = table.iloc[order.argsort(kind="stable")].reset_index(drop=True)
    table["ranking"] = table["ranking"].replace({"random": "random tokens"})
    table.columns.name = None
    return table


def summary_text(result: PipelineResult) -> str:
    """What `segcompass-analyze pipeline` prints: coverage AUCs with CIs and the coverage verdict
    (referred − distractor with its CI, random tokens, the random-init control), then L0 by token type and
    the sparsity verdict."""
    cols = ["model", "group", "tokens", "mean_l0", "l0_ci_low", "l0_ci_high", "distinct_atoms"]
    verdicts = result.verdicts
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        coverage = auc_summary(result.coverage_auc).to_string(index=False)
        sparsity = result.sparsity[[c for c in cols if c in result.sparsity]].to_string(index=False)
    return "\n".join(
        [
            "Instance coverage AUC — area under coverage vs top-K % of image tokens, 95 % CI over documents "
            "(random tokens ≈ 0.5):",
            coverage,
            "",
            "Coverage verdict: " + verdicts["coverage"].text(),
            "",
            "SAE sparsity by token type (mean L0 with 95 % bootstrap CI):",
            sparsity,
            "",
            "Sparsity verdict: " + verdicts["sparsity"].text(),
        ]
    )


def main(cfg: PipelineConfig) -> PipelineResult:
    """CLI entry: run and print the headline numbers, the verdicts and where the reports are."""
    result = run_pipeline(cfg)
    print("\n" + summary_text(result))
    print(f"\nData, activation stores and SAEs are under {Path(cfg.out).resolve()}")
    for name, path in result.reports.items():
        print(f"{name} report: {path.absolute()}")
    return result
