"""Cached stages: config → key → build once → atomic publish → load.

A stage is anything trained or computed once and reused: a pretraining stage of the tiny VLM, the tiny
SAM, a head warm start. Its folder is `<cache>/<name>-<sha256(name, version, config)[:16]>/`, built in a
temporary folder beside it and renamed into place when complete (`sae.files.atomic.staged_folder`), so a
folder that exists is finished. Loading never trains: `stage_folder` raises `StageMissing` with the
command that builds it; `build_stage` builds what is missing and says so.

A stage whose input is another stage's output puts that stage's key into its own config, so changing an
early stage changes every key after it.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sae.files.atomic import staged_folder

logger = logging.getLogger(__name__)

CACHE_ENV = "SEGCOMPASS_CACHE"
"""Environment variable that moves the cache (default `~/.cache/segcompass`)."""
STAGE_FILE = "stage.json"
"""Written last into every stage folder: the stage name, version, key and config."""

C = TypeVar("C")

_building_root: contextvars.ContextVar[Path | None] = contextvars.ContextVar("stage_root", default=None)
"""The cache root of the stage being built: a stage built (or looked up) inside another's build uses it."""


class StageMissing(FileNotFoundError):
    """A stage's folder is not built yet; the message names the command that builds it."""


def default_cache_root() -> Path:
    """`$SEGCOMPASS_CACHE` or `~/.cache/segcompass`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segcompass"


def config_json(config: Any) -> Any:
    """A JSON-able form of a (dataclass) config."""
    return asdict(config) if is_dataclass(config) else config


@dataclass(frozen=True)
class Stage(Generic[C]):
    """A cached stage: how to build its folder from a config, and its identity."""

    name: str
    """Folder prefix and log name, e.g. `vlm-vision`."""
    version: int
    """Bumped whenever the code changes what a config produces (part of the key)."""
    build: Callable[[C, Path], None]
    """Writes the stage's files into an empty folder."""
    command: str
    """The command a user runs to build it (named by `StageMissing`)."""
    subdir: str = "stages"
    """Folder under the cache root."""

    def key(self, config: C) -> str:
        """`<name>-<first 16 hex of sha256 of (name, version, config)>`."""
        text = json.dumps(
            {"stage": self.name, "version": self.version, "config": config_json(config)},
            sort_keys=True,
            default=str,
        )
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def path(self, config: C, cache_root: str | os.PathLike | None = None) -> Path:
        """Where the stage's folder lives (inside another stage's build: under that stage's cache root)."""
        root = _resolve_root(cache_root)
        return root / self.subdir / self.key(config)


def resolve_root(cache_root: str | os.PathLike | None = None) -> Path:
    """The cache root a stage lookup uses: `cache_root`, else the root of the stage being built, else
    `default_cache_root()`."""
    return _resolve_root(cache_root)


def _resolve_root(cache_root: str | os.PathLike | None) -> Path:
    if cache_root:
        return Path(cache_root).expanduser()
    return _building_root.get() or default_cache_root()


def is_built(path: Path) -> bool:
    """A stage folder is complete when its `stage.json` exists (it is only ever renamed into place whole)."""
    return (path / STAGE_FILE).is_file()


def stage_folder(stage: Stage[C], config: C, cache_root: str | os.PathLike | None = None) -> Path:
    """The built folder of `stage` for `config`; `StageMissing` (naming the build command) otherwise."""
    path = stage.path(config, cache_root)
    if not is_built(path):
        raise StageMissing(f"{stage.name} is not built yet ({path}); build it with `{stage.command}`")
    return path


def build_stage(
    stage: Stage[C],
    config: C,
    cache_root: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> Path:
    """Build `stage` for `config` unless it is already built (or `force`), publish it atomically, and
    return its folder. A concurrent builder that finished first wins; its folder is kept."""
    path = stage.path(config, cache_root)
    if is_built(path) and not force:
        logger.info("%s: cached (%s)", stage.name, path)
        return path
    logger.info("%s: building %s", stage.name, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    token = _building_root.set(_resolve_root(cache_root))
    try:
        with staged_folder(staging) as tmp:
            stage.build(config, tmp)
            record = {"stage": stage.name, "version": stage.version, "key": path.name}
            record["config"] = config_json(config)
            (tmp / STAGE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    finally:
        _building_root.reset(token)
    old = None
    if path.exists():
        if is_built(path) and not force:
            logger.info("%s: another process built %s first; using its copy", stage.name, path)
            shutil.rmtree(staging, ignore_errors=True)
            return path
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    try:
        os.replace(staging, path)
    except OSError:
        if not is_built(path):  # not a concurrent builder that published first: a real error
            raise
        logger.info("%s: another process built %s first; using its copy", stage.name, path)
        shutil.rmtree(staging, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("%s: published %s", stage.name, path)
    return path


def find_stage(
    stage: Stage[C],
    config: C,
    cache_root: str | os.PathLike | None = None,
    *,
    legacy: list[Path] | tuple[Path, ...] = (),
    legacy_complete: Callable[[Path], bool] | None = None,
    missing: str = "",
) -> Path:
    """Like `stage_folder`, but a folder of a previous cache layout (the first of `legacy` that
    `legacy_complete` accepts) is used when the stage's own folder is not built; `missing` replaces the
    `StageMissing` message (name the exact command that builds it). Never builds."""
    path = stage.path(config, cache_root)
    if is_built(path):
        return path
    for old in legacy:
        if legacy_complete is not None and legacy_complete(old):
            logger.info("%s: using %s (previous cache layout)", stage.name, old)
            return old
    raise StageMissing(missing or f"{stage.name} is not built yet ({path}); build it with `{stage.command}`")


def ensure_stage(
    stage: Stage[C],
    config: C,
    cache_root: str | os.PathLike | None = None,
    *,
    find: Callable[[C, str | os.PathLike | None], Path] | None = None,
    force: bool = False,
) -> tuple[Path, bool]:
    """What the pipeline and the commands call: (folder, True) when `find` (default `stage_folder`) finds
    the stage built, else (and with `force`) build it, saying so, → (folder, False)."""
    if not force:
        try:
            return (find(config, cache_root) if find else stage_folder(stage, config, cache_root)), True
        except StageMissing:
            logger.info("%s is not built: building it", stage.name)
    return build_stage(stage, config, cache_root, force=force), False
