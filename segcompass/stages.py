"""Cached stages: config → key → build once → atomic publish → load.

A stage is anything trained or computed once and reused: a pretraining stage of the tiny VLM, the tiny
SAM, a head warm start. Its folder is `<cache>/<name>-<sha256(name, version, config)[:16]>/`, built in a
temporary folder beside it and renamed into place when complete (`sae.files.atomic.staged_folder`), so a
folder that exists is finished. Loading never trains: `stage_folder` raises `StageMissing` with the
command that builds it; `build_stage` builds what is missing and says so.

A stage whose input is another stage's output puts that stage's key into its own config, so changing an
early stage changes every key after it.

A *resumable* stage (`Stage.resumable`: an activation capture, an SAE training run) is built in place in a
stable work folder `<key>.partial` beside its final folder, which an interruption leaves behind: the next
build calls `build` on it again, which continues what is there, and the folder is renamed to `<key>` when the
build returns. A lock file `.<key>.lock` beside it keeps a second builder out (it waits, or with
`wait=False` is refused with `StageBusy`); a killed builder's lock is dropped by the kernel, so the next
builder takes over and resumes. The build runs inside `loop_checkpoints.checkpointing(<key>.partial)`, so a
training loop in it (`CheckpointedLoop`) checkpoints there and continues from its last checkpoint. A
`.partial` folder is never loaded.

A stage committed with the code (`committed.py`: the repository's `checkpoints/`) is copied into the cache,
checked against its manifest, the first time it is looked up or asked to be built there; `force` builds it
anyway.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sae.files import (
    FolderLock,
    FolderLockedError,
    apply_umask_tree,
    atomic_write_text,
    fsync_dir,
    fsync_tree,
)
from sae.files.atomic import staged_folder, temporary_name

from .committed import STAGE_FILE, install_committed
from .loop_checkpoints import checkpointing

logger = logging.getLogger(__name__)

CACHE_ENV = "SEGCOMPASS_CACHE"
"""Environment variable that moves the cache (default `~/.cache/segcompass`)."""
PARTIAL_SUFFIX = ".partial"
"""A resumable stage is built in `<key>.partial` (kept across interruptions) and renamed to `<key>`."""
WAIT_POLL_SECONDS = 2.0
"""How often a builder waiting for another builder's lock on a resumable stage tries again."""

C = TypeVar("C")

_building_root: contextvars.ContextVar[Path | None] = contextvars.ContextVar("stage_root", default=None)
"""The cache root of the stage being built: a stage built (or looked up) inside another's build uses it."""


class StageMissing(FileNotFoundError):
    """A stage's folder is not built yet; the message names the command that builds it."""


class StageBusy(FolderLockedError):
    """Another live process is building the same resumable stage (the message names it)."""


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
    resumable: bool = False
    """Build in place in `<key>.partial`, which survives an interruption, under a lock; `build` is then
    called again on what an interrupted build left there and must continue it (module docstring). False:
    each attempt starts in a fresh temporary folder."""

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


def partial_folder(path: Path) -> Path:
    """The work folder a resumable stage whose final folder is `path` is built in."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _missing(stage: Stage[Any], path: Path) -> str:
    text = f"{stage.name} is not built yet ({path}); build it with `{stage.command}`"
    if stage.resumable and partial_folder(path).is_dir():
        text += f" (it continues the interrupted build in {partial_folder(path)})"
    return text


def stage_folder(stage: Stage[C], config: C, cache_root: str | os.PathLike | None = None) -> Path:
    """The built folder of `stage` for `config`; `StageMissing` (naming the build command) otherwise."""
    path = stage.path(config, cache_root)
    if not is_built(path) and not install_committed(stage.subdir, path):
        raise StageMissing(_missing(stage, path))
    return path


def build_stage(
    stage: Stage[C],
    config: C,
    cache_root: str | os.PathLike | None = None,
    *,
    force: bool = False,
    wait: bool = True,
) -> Path:
    """Build `stage` for `config` unless it is already built (or `force`), publish it atomically, and
    return its folder. A concurrent builder that finished first wins; its folder is kept. A resumable stage
    continues its interrupted build; while another process builds it, this one waits for it (`wait`), or
    raises `StageBusy`."""
    path = stage.path(config, cache_root)
    if is_built(path) and not force:
        logger.info("%s: cached (%s)", stage.name, path)
        return path
    if not force and install_committed(stage.subdir, path):
        return path
    if stage.resumable:
        return _build_resumable(stage, config, path, _resolve_root(cache_root), force=force, wait=wait)
    logger.info("%s: building %s", stage.name, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    token = _building_root.set(_resolve_root(cache_root))
    try:
        with staged_folder(staging) as tmp:
            stage.build(config, tmp)
            (tmp / STAGE_FILE).write_text(_record(stage, config, path))
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


def _record(stage: Stage[C], config: C, path: Path) -> str:
    record = {"stage": stage.name, "version": stage.version, "key": path.name, "config": config_json(config)}
    return json.dumps(record, indent=2, sort_keys=True, default=str)


@contextlib.contextmanager
def _builder_lock(stage: Stage[Any], path: Path, wait: bool) -> Iterator[None]:
    """Hold `.<key>.lock` beside `path`: one builder of a resumable stage at a time."""
    lock = FolderLock(path.parent, f"building {stage.name}", name=f".{path.name}.lock")
    waiting = False
    while True:
        try:
            lock.acquire()
            break
        except FolderLockedError as err:
            if not wait:
                raise StageBusy(f"{stage.name} ({path}) is being built by another process: {err}") from None
            if not waiting:
                logger.info("%s: another process is building %s; waiting for it", stage.name, path)
                waiting = True
            time.sleep(WAIT_POLL_SECONDS)
    try:
        yield
    finally:
        lock.release()


def _build_resumable(stage: Stage[C], config: C, path: Path, root: Path, *, force: bool, wait: bool) -> Path:
    """Build (or continue building) `stage` in `<key>.partial` under its lock and rename it to `path`."""
    work = partial_folder(path)
    with _builder_lock(stage, path, wait):
        if is_built(path) and not force:  # the builder this one waited for published it
            logger.info("%s: built by another process meanwhile (%s)", stage.name, path)
            return path
        if force:
            shutil.rmtree(work, ignore_errors=True)
        resumed = work.is_dir()
        logger.info(
            "%s: %s %s", stage.name, "continuing the interrupted build in" if resumed else "building in", work
        )
        work.mkdir(parents=True, exist_ok=True)
        token = _building_root.set(root)
        try:
            with checkpointing(work):  # training loops in the build resume from their checkpoints
                stage.build(config, work)
        finally:
            _building_root.reset(token)
        atomic_write_text(work / STAGE_FILE, _record(stage, config, path))  # a folder with it is complete
        apply_umask_tree(work)
        fsync_tree(work)
        old = temporary_name(path, "old") if path.exists() else None
        if old is not None:  # `force`: the previous build goes only once the new one is complete
            os.replace(path, old)
        os.replace(work, path)
        fsync_dir(path.parent)
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
    if is_built(path) or install_committed(stage.subdir, path):
        return path
    for old in legacy:
        if legacy_complete is not None and legacy_complete(old):
            logger.info("%s: using %s (previous cache layout)", stage.name, old)
            return old
    raise StageMissing(missing or _missing(stage, path))


def ensure_stage(
    stage: Stage[C],
    config: C,
    cache_root: str | os.PathLike | None = None,
    *,
    find: Callable[[C, str | os.PathLike | None], Path] | None = None,
    force: bool = False,
    wait: bool = True,
) -> tuple[Path, bool]:
    """What the pipeline and the commands call: (folder, True) when `find` (default `stage_folder`) finds
    the stage built, else (and with `force`) build it, saying so, → (folder, False); `wait` as
    `build_stage`'s."""
    if not force:
        try:
            return (find(config, cache_root) if find else stage_folder(stage, config, cache_root)), True
        except StageMissing:
            logger.info("%s is not built: building it", stage.name)
    return build_stage(stage, config, cache_root, force=force, wait=wait), False
