"""A backbone's hook-layer activations over a corpus as a resumable cached stage
(`<out>/activations/store-<sha>/`): an interrupted capture continues in its `.partial` folder."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

from sae.capture import CaptureConfig, run_capture
from sae.store.format import MANIFEST, PROGRESS_DIR
from segcompass.backbones import Backbone
from segcompass.stages import Stage

from .keys import BUILD_COMMAND, backbone_key, ensure_artifact


@dataclass(frozen=True)
class StoreConfig:
    """What decides an activation store."""

    backbone: str
    """The backbone: its spec and what it resolved to (`backbone_key`)."""
    corpus: str
    """The corpus folder's name (the corpus stage's key)."""
    text_column: str = "text"
    """Corpus field captured as the prompt's text ("text": scene descriptions; "instruction": referring
    instructions)."""
    image_first: bool = True
    """Put the image before the text in the prompt."""
    batch_size: int = 8
    """Documents per capture forward (batches are padded together)."""
    seed: int = 0
    """Seed recorded with the weights' identity (`CaptureConfig.seed`)."""


def _capture(config: StoreConfig, folder: Path, *, backbone: Backbone, corpus: Path) -> None:
    if (folder / MANIFEST).exists():  # finished before an interruption, not yet published
        return
    capture = CaptureConfig(
        data=str(corpus),
        out=str(folder),
        backbone=backbone.name_or_path,
        batch_size=config.batch_size,
        text_column=config.text_column,
        image_first=config.image_first,
        resume=(folder / PROGRESS_DIR).exists(),
        seed=config.seed,
    )
    run_capture(capture, backbone=backbone)


STORE_STAGE: Stage[StoreConfig] = Stage(
    "store", 1, _capture, BUILD_COMMAND, subdir="activations", resumable=True
)
"""The build is bound to the loaded backbone and the corpus folder (`activation_store`)."""


def activation_store(
    backbone: Backbone,
    spec: str,
    corpus: Path,
    out: Path,
    *,
    text_column: str = "text",
    image_first: bool = True,
    batch_size: int = 8,
    seed: int = 0,
    legacy: Path | None = None,
) -> Path:
    """`backbone`'s (resolved from `spec`) hook-layer activations over `corpus`, captured once under `out`
    (an interrupted capture continues); `legacy`: where the previous layout kept this store."""
    config = StoreConfig(
        backbone_key(spec, backbone), Path(corpus).name, text_column, image_first, batch_size, seed
    )
    build = functools.partial(_capture, backbone=backbone, corpus=Path(corpus))
    stage = dataclasses.replace(STORE_STAGE, build=build)
    return ensure_artifact(stage, config, Path(out), legacy, lambda p: (p / MANIFEST).is_file())
