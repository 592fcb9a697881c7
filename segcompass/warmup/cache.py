"""The warmed-up backbones as a cached stage (`segcompass.stages`): one folder per config, built once,
published atomically, loaded through `load_backbone` (the same path as a real checkpoint).

Layout of `<cache root>/backbones/backbone-warmup-<sha>/` (the stage `segcompass.backbones.warm.WARMUP_STAGE`)::

    config.json, model.safetensors, tokenizer/processor files, segcompass.json   (Backbone.save)
    warmup_config.json     the WarmupConfig (with warmup_version)
    warmup_eval.csv        the held-out evaluation, trained vs random-init control
    warmup_train.json      loss per step, task per step, wall time
    stage.json             the stage record (written last)

`warm_up` / `warm_up_artifact` build what is missing (and log it); `resolve_backbone("warm:…")` only loads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from segcompass.backbones import Backbone, load_backbone
from segcompass.backbones.warm import WARMUP_STAGE, StageMissing, load_warm, warm_config, warm_folder
from segcompass.stages import Stage, default_cache_root, ensure_stage

from .config import WarmupConfig
from .evaluate import evaluate_with_control
from .train import train

logger = logging.getLogger(__name__)

CONFIG_FILE = "warmup_config.json"
EVAL_FILE = "warmup_eval.csv"
TRAIN_FILE = "warmup_train.json"


@dataclass
class WarmupArtifact:
    """A cached warm-up: the loaded backbone, where it lives, and its records."""

    backbone: Backbone
    """Loaded with `load_backbone(path)`."""
    path: Path
    """The cache folder."""
    config: WarmupConfig
    """The config it was trained with."""
    evaluation: pd.DataFrame
    """Held-out evaluation (trained and random-init rows; see `evaluate.evaluate`)."""
    train_info: dict
    """`warmup_train.json`: losses, tasks, wall_s, scene_s, steps."""
    cached: bool
    """True when this call loaded an existing folder instead of training."""


def default_cache_dir() -> Path:
    """The cache root (`$SEGCOMPASS_CACHE` or `~/.cache/segcompass`); warm-ups live under its `backbones/`."""
    return default_cache_root()


def cache_path(config: WarmupConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of `config`'s warmed-up backbone under the cache root `cache_dir` (built or not)."""
    return WARMUP_STAGE.path(config, cache_dir)


def _build(config: WarmupConfig, folder: Path, *, progress: bool = True) -> None:
    """The stage's build: train, evaluate beside the random-init control, save into `folder`."""
    result = train(config, progress=progress)
    table = evaluate_with_control(result.backbone, config)
    info = {
        "steps": config.steps,
        "wall_s": result.wall_s,
        "scene_s": result.scene_s,
        "losses": result.losses,
        "tasks": result.tasks,
        "referent_accuracy": result.referent_accuracy,
    }
    result.backbone.save(folder)
    (folder / CONFIG_FILE).write_text(config.to_json())
    table.to_csv(folder / EVAL_FILE, index=False)
    (folder / TRAIN_FILE).write_text(json.dumps(info))


WARMUP_BUILD: Stage[WarmupConfig] = dataclasses.replace(WARMUP_STAGE, build=_build)
"""The warm-up stage with its build (same name, version and folders as `WARMUP_STAGE`)."""


def load_artifact(path: str | os.PathLike, **load_kwargs) -> WarmupArtifact:
    """Load a built folder: the backbone through `load_backbone`, plus its config and records."""
    path = Path(path)
    if not (path / EVAL_FILE).exists():
        raise StageMissing(f"{path} is not a finished warm-up folder")
    return WarmupArtifact(
        backbone=load_backbone(path, **load_kwargs),
        path=path,
        config=WarmupConfig.from_json((path / CONFIG_FILE).read_text()),
        evaluation=pd.read_csv(path / EVAL_FILE),
        train_info=json.loads((path / TRAIN_FILE).read_text()) if (path / TRAIN_FILE).exists() else {},
        cached=True,
    )


def build_warm_up(
    config: WarmupConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Build `config`'s warm-up unless it is built (new or previous layout); (folder, was it cached)."""
    stage = dataclasses.replace(WARMUP_BUILD, build=functools.partial(_build, progress=progress))
    return ensure_stage(stage, config or WarmupConfig(), cache_dir, find=warm_folder, force=force)


def warm_up_artifact(
    config: WarmupConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    **load_kwargs,
) -> WarmupArtifact:
    """Build `config`'s warmed-up backbone if it is missing (`force`: rebuild), then load it.

    `cache_dir` is the cache root (default `$SEGCOMPASS_CACHE` or `~/.cache/segcompass`). `load_kwargs` go
    to `load_backbone` (hook_layer, dtype, device).
    """
    path, cached = build_warm_up(config, cache_dir, force=force, progress=progress)
    artifact = load_artifact(path, **load_kwargs)
    artifact.cached = cached
    return artifact


def warm_up(
    config: WarmupConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    **load_kwargs,
) -> Backbone:
    """The warmed-up tiny backbone of `config`: built once if missing (with a progress bar), then loaded."""
    return warm_up_artifact(config, cache_dir, force=force, progress=progress, **load_kwargs).backbone


def ensure_warm_backbone(spec: str, *, seed: int = 0, num_slots: int | None = None) -> None:
    """Build the warm-up a `warm:<family>` backbone spec names (`warm_config`: `num_slots` is the policy's K)
    if it is missing, and say so; other specs need nothing. What the pipeline and the training commands call
    before they load `spec`."""
    if spec.startswith("warm:"):
        build_warm_up(warm_config(spec, seed=seed, num_slots=num_slots))


def resolve_warm(spec: str, *, seed: int = 0, **load_kwargs) -> Backbone:
    """`warm:<family>` → the built default warm-up of that family with `seed` (never trains)."""
    return load_warm(spec, seed=seed, **load_kwargs)
