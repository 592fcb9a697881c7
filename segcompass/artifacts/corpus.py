"""A synthetic image–text corpus of one world split as a cached stage (`<out>/data/corpus-<sha>/`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segcompass.stages import Stage
from segcompass.world import WorldConfig, write_image_text_corpus
from segcompass.world.write_corpus import CORPUS_FILE

from .keys import BUILD_COMMAND, ensure_artifact
from .legacy import corpus_folder


@dataclass(frozen=True)
class CorpusConfig:
    """What decides a corpus (`write_image_text_corpus`)."""

    world: WorldConfig
    """The synthetic world (its seed and generation settings)."""
    split: str
    """World split the documents come from ("train", "val", …)."""
    documents: int
    """Number of documents."""


def _write(config: CorpusConfig, folder: Path) -> None:
    write_image_text_corpus(folder, config.world, {config.split: config.documents})


CORPUS_STAGE: Stage[CorpusConfig] = Stage("corpus", 1, _write, BUILD_COMMAND, subdir="data")
"""Built whole in a temporary folder and renamed into place (image paths are relative to it)."""


def world_corpus(out: Path, world: WorldConfig, split: str, n: int) -> Path:
    """`n` image–text documents of a world split under `out`, written once."""
    return ensure_artifact(
        CORPUS_STAGE,
        CorpusConfig(world, split, n),
        Path(out),
        corpus_folder(Path(out), world, split, n),
        lambda p: (p / CORPUS_FILE).is_file(),
    )
