"""Cached default artefacts on the synthetic world: corpora, activation stores, SAEs (one function each).

Both the default analysis pipeline (`analysis.pipeline`) and the training recipe
(`segcompass.training.ablation`) build on them. Every folder is keyed by every setting that decides its
content, so a changed setting never reuses a stale stage; an interrupted capture or SAE run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from sae.capture import CaptureConfig, run_capture
from segcompass.backbones import Backbone
from segcompass.world import WorldConfig, write_image_text_corpus

logger = logging.getLogger(__name__)


def stage_key(*parts) -> str:
    """Short hash of the settings of a stage."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def world_corpus(out: Path, world: WorldConfig, split: str, n: int) -> Path:
    """`n` image–text documents of a world split (`write_image_text_corpus`), written once."""
    folder = Path(out) / "data" / f"corpus-{split}-{stage_key(asdict(world), split, n)}"
    if (folder / "corpus.jsonl").exists():
        logger.info("reusing corpus %s", folder)
    else:
        logger.info("writing %d synthetic %s documents to %s", n, split, folder)
        write_image_text_corpus(folder, world, {split: n})
    return folder


def activation_store(
    backbone: Backbone,
    corpus: Path,
    folder: Path,
    *,
    text_column: str = "text",
    image_first: bool = True,
    batch_size: int = 8,
    seed: int = 0,
) -> Path:
    """Capture `backbone`'s hook-layer activations over `corpus` into `folder` (resumes; reused when done)."""
    folder = Path(folder)
    if (folder / "manifest.json").exists():
        logger.info("reusing activation store %s", folder)
        return folder
    capture = CaptureConfig(
        data=str(corpus),
        out=str(folder),
        backbone=backbone.name_or_path,
        batch_size=batch_size,
        text_column=text_column,
        image_first=image_first,
        resume=(folder / "progress").exists(),
        seed=seed,
    )
    run_capture(capture, backbone=backbone)
    return folder


TINY_SAE_ARCHITECTURE = "batchtopk"
"""Architecture of the default tiny SAEs. Standard L1 SAEs at a few hundred steps keep a third of the
world's word identity; BatchTopK keeps twice that at a higher explained variance (results/head_diagnosis.md
§4), and unlike TopK its saved (JumpReLU) form has a per-token L0, which the sparsity analysis compares."""
TINY_SAE_K = 16.0
"""Active atoms per token of the default tiny SAEs (BatchTopK: on average)."""
TINY_SAE_EPOCHS = 20.0
"""Passes over the corpus tokens of the default tiny SAEs."""
TINY_SAE_DEAD_WINDOW = 50
"""sae-lens's dead-feature window (steps) of the default tiny SAEs: the TopK auxiliary loss revives atoms
dead for this long; at the 1000-step default it never acts in a ~1000-step run (dead atoms 0.93 → 0.57 on
the default world, explained variance 0.988 → 0.996)."""
TINY_SAE_RECIPE = ("tiny", TINY_SAE_ARCHITECTURE, TINY_SAE_K, TINY_SAE_EPOCHS, TINY_SAE_DEAD_WINDOW)
"""Everything that decides a default tiny SAE besides its store and seed (for stage keys)."""


def backbone_key(spec: str, backbone: Backbone) -> str:
    """Stage-key part naming a backbone: the spec and what it resolved to (a `warm:` spec resolves to a
    cache folder named by its warm-up config, so a new warm-up default never reuses stages of the old one)."""
    return f"{spec}@{backbone.name_or_path}"


def trained_sae(
    store: Path,
    folder: Path,
    *,
    preset: str = "tiny",
    architecture: str = TINY_SAE_ARCHITECTURE,
    k: float = TINY_SAE_K,
    epochs: float = TINY_SAE_EPOCHS,
    dead_feature_window: int = TINY_SAE_DEAD_WINDOW,
    seed: int = 0,
) -> Path:
    """Train an SAE on `store` into `folder` through `segcompass-sae train` (resumes; reused when done).

    `architecture` and `k` are `TrainConfig`'s (k only counts for topk / batchtopk); key `folder` by them.
    """
    from sae.training import TrainConfig, train_sae

    folder = Path(folder)
    if (folder / "cfg.json").exists():
        logger.info("reusing SAE %s", folder)
        return folder
    train = TrainConfig(
        store=str(store),
        out=str(folder),
        preset=preset,
        architecture=architecture,
        k=k,
        epochs=epochs,
        dead_feature_window=dead_feature_window,
        seed=seed,
        resume=(folder / "checkpoints").exists(),
    )
    train_sae(train)
    return folder
