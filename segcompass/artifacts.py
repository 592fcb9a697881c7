"""Cached default artefacts on the synthetic world: corpora, activation stores, SAEs (one function each).

Both the default analysis pipeline (`analysis.pipeline`) and the training recipe
(`segcompass.training.recipe`) build on them. Every folder is keyed by every setting that decides its
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


def trained_sae(
    store: Path, folder: Path, *, preset: str = "tiny", epochs: float = 3.0, seed: int = 0
) -> Path:
    """Train an SAE on `store` into `folder` with `segcompass-sae train`'s preset (resumes; reused)."""
    from sae.training import TrainConfig, train_sae

    folder = Path(folder)
    if (folder / "cfg.json").exists():
        logger.info("reusing SAE %s", folder)
        return folder
    train = TrainConfig(
        store=str(store),
        out=str(folder),
        preset=preset,
        epochs=epochs,
        seed=seed,
        resume=(folder / "checkpoints").exists(),
    )
    train_sae(train)
    return folder
