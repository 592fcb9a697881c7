"""Where the previous layout (before the artefacts were cached stages) kept the default pipeline's and the
training ablation's corpora, stores and SAEs, so that their finished folders are still used: a run folder
written before keeps its SAEs, and so the keys of everything trained from them."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from segcompass.world import WorldConfig

from .keys import stage_key

ABLATION_SAE_RECIPE = ("tiny", "batchtopk", 16.0, 20.0, 50)
"""What the previous layout keyed the ablation's SAE by besides its store (the tiny recipe then)."""


def corpus_folder(out: Path, world: WorldConfig, split: str, n: int) -> Path:
    """The previous layout's corpus folder."""
    return Path(out) / "data" / f"corpus-{split}-{stage_key(asdict(world), split, n)}"


def _name(spec: str) -> str:
    return spec.replace(":", "-").replace("/", "_")


def pipeline_folders(
    out: Path,
    world: WorldConfig,
    spec: str,
    bkey: str,
    *,
    seed: int,
    sae_documents: int,
    analysis_documents: int,
    instruction_first: bool,
    sae_recipe: tuple,
) -> dict[str, Path]:
    """The previous layout's folders of the default pipeline for one backbone: `train_store`, `sae` and
    `analysis_store`. `bkey`: `backbone_key`; `sae_recipe`: (preset, architecture, k, epochs, dead-feature
    window)."""
    out, name = Path(out), _name(spec)
    train_key = stage_key(bkey, seed, corpus_folder(out, world, "train", sae_documents).name)
    val = corpus_folder(out, world, "val", analysis_documents).name
    return {
        "train_store": out / "activations" / f"{name}-sae-train-{train_key}",
        "sae": out / "sae" / f"{name}-{stage_key(train_key, *sae_recipe)}",
        "analysis_store": out
        / "activations"
        / f"{name}-analysis-{stage_key(bkey, seed, val, instruction_first)}",
    }


def ablation_folders(
    out: Path, world: WorldConfig, spec: str, bkey: str, sae_documents: int
) -> dict[str, Path]:
    """The previous layout's folders of the ablation's SAE: `store` and `sae`."""
    out, name = Path(out), _name(spec)
    corpus = corpus_folder(out, world, "train", sae_documents).name
    return {
        "store": out / "activations" / f"{name}-{stage_key(bkey, corpus)}",
        "sae": out / "sae" / f"{name}-{stage_key(bkey, corpus, *ABLATION_SAE_RECIPE)}",
    }
