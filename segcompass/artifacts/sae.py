"""An SAE trained on an activation store as a resumable cached stage (`<out>/sae/sae-<sha>/`): an
interrupted training run continues from its last checkpoint in its `.partial` folder."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

from sae.saved import METADATA_FILE
from segcompass.stages import Stage

from .keys import BUILD_COMMAND, ensure_artifact

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


@dataclass(frozen=True)
class SaeConfig:
    """What decides an SAE (`segcompass-sae train`'s settings besides its store path)."""

    store: str = ""
    """The activation store's folder name (the store stage's key; `trained_sae` fills it in)."""
    preset: str = "tiny"
    """`segcompass-sae train --preset` (tiny: 2048 atoms, activation normalisation)."""
    architecture: str = TINY_SAE_ARCHITECTURE
    """`TrainConfig.architecture`."""
    k: float = TINY_SAE_K
    """Active atoms per token (topk / batchtopk only)."""
    epochs: float = TINY_SAE_EPOCHS
    """Passes over the store's tokens."""
    dead_feature_window: int = TINY_SAE_DEAD_WINDOW
    """sae-lens's dead-feature window (steps)."""
    seed: int = 0
    """Initialisation and data-order seed."""


def _train(config: SaeConfig, folder: Path, *, store: Path) -> None:
    from sae.training import TrainConfig, train_sae

    if (folder / METADATA_FILE).exists():  # finished (its metadata is written last), not yet published
        return
    train = TrainConfig(
        store=str(store),
        out=str(folder),
        preset=config.preset,
        architecture=config.architecture,
        k=config.k,
        epochs=config.epochs,
        dead_feature_window=config.dead_feature_window,
        seed=config.seed,
        resume=(folder / "checkpoints").exists(),
    )
    train_sae(train)


SAE_STAGE: Stage[SaeConfig] = Stage("sae", 1, _train, BUILD_COMMAND, subdir="sae", resumable=True)
"""The build is bound to the store folder (`trained_sae`)."""


def trained_sae(
    store: Path, out: Path, config: SaeConfig | None = None, *, legacy: Path | None = None
) -> Path:
    """An SAE trained once on `store` under `out` with `config`'s settings (default: the tiny recipe; its
    `store` is filled in); an interrupted run continues. `legacy`: where the previous layout kept it."""
    config = dataclasses.replace(config or SaeConfig(), store=Path(store).name)
    stage = dataclasses.replace(SAE_STAGE, build=functools.partial(_train, store=Path(store)))
    return ensure_artifact(stage, config, Path(out), legacy, lambda p: (p / METADATA_FILE).is_file())
