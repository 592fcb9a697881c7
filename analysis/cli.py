"""`segcompass-analyze`: the default pipeline and the concept analyses, as reports and tables."""

from __future__ import annotations

from collections.abc import Sequence

from analysis.atoms.command import AtomsReportConfig, atoms_main
from analysis.commands import CoverageReportConfig, SparsityReportConfig, coverage_main, sparsity_main
from analysis.pipeline import PipelineConfig
from analysis.pipeline import main as run_pipeline_cli
from analysis.provenance.command import ProvenanceReportConfig, provenance_main
from sae.cli_support import Command, run_cli
from segcompass.warmup.cli import WarmupCommandConfig
from segcompass.warmup.cli import main as warmup_main
from segcompass.world.contrast_probe import ContrastProbeConfig, run_contrast_baseline

DESCRIPTION = (
    "Analyse what SegCompass's sparse concepts do: the default pipeline on the built-in synthetic world, "
    "the pixel-contrast baseline, and (as they land) coverage, sparsity, attribution and provenance reports."
)

COMMANDS = [
    Command("pipeline", PipelineConfig, run_pipeline_cli, "run the default pipeline on the synthetic world"),
    Command(
        "contrast-baseline",
        ContrastProbeConfig,
        run_contrast_baseline,
        "linear probes on raw patch pixels: how far pixel contrast alone gets (default vs plain world)",
    ),
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
]


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("segcompass-analyze", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
