"""`segcompass-analyze`: the default pipeline and the concept analyses, as reports and tables."""

from __future__ import annotations

from collections.abc import Sequence

from analysis.atoms.command import AtomsReportConfig, atoms_main
from analysis.coverage.command import CoverageReportConfig, coverage_main
from analysis.pipeline import PipelineConfig
from analysis.pipeline import main as run_pipeline_cli
from analysis.provenance.command import ProvenanceReportConfig, provenance_main
from analysis.sparsity.command import SparsityReportConfig, sparsity_main
from sae.cli_support import Command, run_cli
from segcompass.warmup.command import WarmupCommandConfig
from segcompass.warmup.command import main as warmup_main
from segcompass.world.contrast_probe import ContrastProbeConfig, run_contrast_baseline

DESCRIPTION = (
    "Analyse what SegCompass's sparse concepts do: the default pipeline on the built-in synthetic world and "
    "the coverage, sparsity, atom and provenance reports. (`warmup` and `contrast-baseline` are deprecated "
    "aliases: they moved to `segcompass`.)"
)

COMMANDS = [
    Command("pipeline", PipelineConfig, run_pipeline_cli, "run the default pipeline on the synthetic world"),
    Command(
        "coverage",
        CoverageReportConfig,
        coverage_main,
        "instance coverage of the most SAE-active image tokens vs random tokens (HTML report + tables)",
    ),
    Command(
        "sparsity",
        SparsityReportConfig,
        sparsity_main,
        "SAE sparsity (L0, activation mass, distinct atoms) by token type with CIs (HTML report + tables)",
    ),
    Command(
        "atoms",
        AtomsReportConfig,
        atoms_main,
        "atom naming: top tokens/patches, offline labels and their held-out consistency (HTML report + tables)",
    ),
    Command(
        "provenance",
        ProvenanceReportConfig,
        provenance_main,
        "slot provenance of a trained model: atom attribution, source tokens/patches, causal check (HTML report)",
    ),
    Command(
        "warmup",
        WarmupCommandConfig,
        warmup_main,
        "deprecated alias of `segcompass warmup`",
        deprecated="segcompass warmup",
    ),
    Command(
        "contrast-baseline",
        ContrastProbeConfig,
        run_contrast_baseline,
        "deprecated alias of `segcompass contrast-baseline`",
        deprecated="segcompass contrast-baseline",
    ),
]


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("segcompass-analyze", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
