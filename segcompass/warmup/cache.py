"""The on-disk cache of warmed-up backbones: one folder per config, written atomically, loaded through
`load_backbone` (the same path as a real checkpoint).

Layout of `<cache_dir>/<family>-<sha256(config json)[:16]>/`::

    config.json, model.safetensors, tokenizer/processor files, segcompass.json   (Backbone.save)
    warmup_config.json     the WarmupConfig (with warmup_version)
    warmup_eval.csv        the held-out evaluation, trained vs random-init control
    warmup_train.json      loss per step, task per step, wall time
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from segcompass.backbones import Backbone, load_backbone
from segcompass.backbones.backbone import METADATA_FILE

from .config import WarmupConfig
from .evaluate import evaluate_with_control
from .train import train

logger = logging.getLogger(__name__)

CACHE_ENV = "SEGCOMPASS_CACHE"
"""Environment variable that moves the cache (default `~/.cache/segcompass/backbones`)."""
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
    """`$SEGCOMPASS_CACHE` or `~/.cache/segcompass/backbones`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segcompass" / "backbones"


def cache_path(config: WarmupConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of `config`'s warmed-up backbone: `<cache_dir>/<config.key()>`."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / config.key()


def is_complete(path: Path) -> bool:
    """True when `path` holds a finished warm-up (it is only ever renamed into place when complete)."""
    return all((path / f).exists() for f in ("config.json", METADATA_FILE, CONFIG_FILE, EVAL_FILE))


def load_artifact(path: str | os.PathLike, **load_kwargs) -> WarmupArtifact:
    """Load a cache folder: the backbone through `load_backbone`, plus its config and records."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a finished warm-up folder")
    return WarmupArtifact(
        backbone=load_backbone(path, **load_kwargs),
        path=path,
        config=WarmupConfig.from_json((path / CONFIG_FILE).read_text()),
        evaluation=pd.read_csv(path / EVAL_FILE),
        train_info=json.loads((path / TRAIN_FILE).read_text()) if (path / TRAIN_FILE).exists() else {},
        cached=True,
    )


def warm_up_artifact(
    config: WarmupConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    **load_kwargs,
) -> WarmupArtifact:
    """Load `config`'s warmed-up backbone from the cache, or train, evaluate and cache it first.

    `force` retrains and replaces an existing entry. `load_kwargs` go to `load_backbone` (hook_layer,
    dtype, device).
    """
    config = config or WarmupConfig()
    path = cache_path(config, cache_dir)
    if is_complete(path) and not force:
        logger.info("warm-up cache hit: %s", path)
        return load_artifact(path, **load_kwargs)
    logger.info("warm-up cache miss: training %s into %s", config.key(), path)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        result.backbone.save(tmp)
        (tmp / CONFIG_FILE).write_text(config.to_json())
        table.to_csv(tmp / EVAL_FILE, index=False)
        (tmp / TRAIN_FILE).write_text(json.dumps(info))
        publish_folder(tmp, path, replace=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    artifact = load_artifact(path, **load_kwargs)
    artifact.cached = False
    return artifact


def publish_folder(
    tmp: Path, path: Path, replace: bool, complete: Callable[[Path], bool] = is_complete
) -> None:
    """Rename the finished `tmp` folder to `path` (same parent, so the rename is atomic). An existing
    `path` is moved aside first when `replace` is set or it is not `complete`; when a concurrent writer
    published a complete copy first, that copy is kept."""
    old = None
    if path.exists() and (replace or not complete(path)):
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except OSError:
        if not complete(path):  # not a concurrent writer that finished first: a real error
            raise
        logger.info("another process cached %s first; using its copy", path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def warm_up(
    config: WarmupConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    **load_kwargs,
) -> Backbone:
    """The warmed-up tiny backbone of `config`: trained once (with a progress bar), then loaded from
    `<cache_dir>/<family>-<sha>/` through `load_backbone`."""
    return warm_up_artifact(config, cache_dir, force=force, progress=progress, **load_kwargs).backbone


def resolve_warm(spec: str, *, seed: int = 0, **load_kwargs) -> Backbone:
    """`warm:<family>` → the default warm-up of that family with `seed` (what `resolve_backbone` calls)."""
    family = spec.removeprefix("warm:") or "qwen2_5_vl"
    return warm_up(WarmupConfig(family=family, seed=seed), **load_kwargs)
