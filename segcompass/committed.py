"""Stage folders committed with the code: stages too slow to build on a CPU within the first run's budget,
trained once by a command the manifest names, and copied into the cache the first time a lookup misses there.

Layout of the committed root (`checkpoints/` at the repository root, or `$SEGCOMPASS_CHECKPOINTS`):

    checkpoints/MANIFEST.json          {key: {"subdir", "files": {name: sha256}, "reproduce", "threads", "torch"}}
    checkpoints/<subdir>/<key>/        a stage folder exactly as `build_stage` wrote it (`stage.json` included)

`segcompass.stages` asks `install_committed` before it builds or reports a stage missing. A committed folder is
checked against the manifest before it enters the cache: a missing or changed file is a
`CommittedCheckpointError` naming it, and the cache is left as it was. The manifest's `reproduce` command
rebuilds the stage from the config in its `stage.json` and compares every tensor with the committed weights
(`compare_weights`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae.files.atomic import atomic_write_text, staged_folder
from sae.store.format import sha256_file

logger = logging.getLogger(__name__)

CHECKPOINTS_ENV = "SEGCOMPASS_CHECKPOINTS"
"""Moves the committed root; set to the empty string to use no committed folders."""
MANIFEST_FILE = "MANIFEST.json"
STAGE_FILE = "stage.json"
"""Written last into every stage folder (`segcompass.stages`): the stage name, version, key and config."""


class CommittedCheckpointError(ValueError):
    """A committed stage folder does not match its manifest (the message names the file)."""


@dataclass(frozen=True)
class CommittedStage:
    """One committed stage folder and what the manifest records about it."""

    key: str
    """The stage's cache key, `<name>-<16 hex>` (the folder's name)."""
    subdir: str
    """The cache subfolder the stage lives in (`Stage.subdir`)."""
    files: dict[str, str]
    """sha256 of every file in the folder, by name."""
    reproduce: str
    """The command that rebuilds it and compares the result with it."""
    threads: int
    """torch threads it was built with (CPU reductions can round differently with another count)."""
    torch: str
    """torch version it was built with."""
    notes: dict[str, str] = field(default_factory=dict)
    """Free-form facts: the CPU it was built on (`cpu`), wall time. Bit-for-bit reproduction is only
    expected on the same kind of CPU: other vector units round sums differently."""

    def folder(self, root: Path) -> Path:
        return root / self.subdir / self.key


def committed_root() -> Path | None:
    """`$SEGCOMPASS_CHECKPOINTS` (empty: none), else the repository's `checkpoints/` when it exists (an
    editable install or a checkout), else None."""
    env = os.environ.get(CHECKPOINTS_ENV)
    if env is not None:
        return Path(env).expanduser() if env else None
    root = Path(__file__).resolve().parents[1] / "checkpoints"
    return root if root.is_dir() else None


def read_manifest(root: Path) -> dict[str, CommittedStage]:
    """The committed stages under `root`, by key (empty when it has no manifest)."""
    path = root / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {key: CommittedStage(key=key, **entry) for key, entry in entries.items()}
    except (json.JSONDecodeError, TypeError) as err:
        raise CommittedCheckpointError(f"{path} is not a valid manifest: {err}") from err


def committed_stage(key: str, root: Path | None = None) -> CommittedStage | None:
    """The manifest entry of `key`, or None when it is not committed (or there is no committed root)."""
    root = root if root is not None else committed_root()
    return None if root is None else read_manifest(root).get(key)


def verify(entry: CommittedStage, root: Path) -> Path:
    """The committed folder of `entry` once every file matches its manifest hash; else
    `CommittedCheckpointError` naming the first file that does not (or an extra file)."""
    folder = entry.folder(root)
    for name, expected in sorted(entry.files.items()):
        path = folder / name
        if not path.is_file():
            raise CommittedCheckpointError(f"committed stage {entry.key}: {path} is missing")
        if sha256_file(path) != expected:
            raise CommittedCheckpointError(
                f"committed stage {entry.key}: {path} does not match its sha256 in {root / MANIFEST_FILE} "
                "(a changed or truncated file; `git checkout` it, or remove the entry to build the stage)"
            )
    extra = sorted(p.name for p in folder.iterdir() if p.name not in entry.files)
    if extra:
        raise CommittedCheckpointError(f"committed stage {entry.key}: files not in the manifest: {extra}")
    return folder


def install_committed(subdir: str, destination: Path, root: Path | None = None) -> bool:
    """Copy the committed folder whose key is `destination.name` into `destination` (a stage's cache
    folder, which must not be built) after `verify`; False when nothing is committed under that key."""
    root = root if root is not None else committed_root()
    entry = committed_stage(destination.name, root)
    if entry is None or root is None or entry.subdir != subdir:
        return False
    source = verify(entry, root)
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with staged_folder(destination) as tmp:
            for name in entry.files:
                shutil.copyfile(source / name, tmp / name)
    except OSError:
        if not (destination / STAGE_FILE).is_file():  # not another process that installed it first
            raise
    logger.info("%s: copied from the committed checkpoint %s", entry.key, source)
    return True


def commit_stage(
    folder: Path, subdir: str, reproduce: str, threads: int, root: Path, notes: dict[str, str] | None = None
) -> CommittedStage:
    """Copy a built stage folder into the committed root under its key and record it in the manifest (what
    a maintainer runs after building a stage to commit). Replaces an entry with the same key."""
    if not (folder / STAGE_FILE).is_file():
        raise CommittedCheckpointError(f"{folder} is not a built stage folder (no {STAGE_FILE})")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    entry = CommittedStage(
        key=folder.name,
        subdir=subdir,
        files={name: sha256_file(folder / name) for name in names},
        reproduce=reproduce,
        threads=threads,
        torch=torch.__version__.split("+")[0],
        notes={"cpu": cpu_name(), **(notes or {})},
    )
    target = entry.folder(root)
    shutil.rmtree(target, ignore_errors=True)
    with staged_folder(target) as tmp:
        for name in names:
            shutil.copyfile(folder / name, tmp / name)
    manifest = {k: _fields(v) for k, v in read_manifest(root).items()}
    manifest[entry.key] = _fields(entry)
    atomic_write_text(root / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return entry


def drop_stage(key: str, root: Path) -> None:
    """Remove a committed stage: its manifest entry first (atomically), then its folder — a stage the
    defaults no longer build, replaced by a rebuilt one. A key that is not committed is an error."""
    entries = read_manifest(root)
    if key not in entries:
        raise CommittedCheckpointError(f"{key} is not committed under {root}: nothing to drop")
    manifest = {k: _fields(v) for k, v in entries.items() if k != key}
    atomic_write_text(root / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(entries[key].folder(root), ignore_errors=True)


def cpu_name() -> str:
    """The CPU's model name and widest vector extension (from /proc/cpuinfo; `platform` elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), ""
    )
    flags = set(
        next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    )
    vector = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "")
    return " ".join(x for x in (model or platform.machine(), vector) if x)


def _fields(entry: CommittedStage) -> dict:
    fields = asdict(entry)
    del fields["key"]
    return fields


@dataclass(frozen=True)
class WeightComparison:
    """How a rebuilt stage's weights compare with the committed ones."""

    identical: bool
    """Every tensor equal, bit for bit, with the same names, shapes and dtypes."""
    tensors: int
    """Tensors compared."""
    max_abs_diff: float
    """Largest absolute difference over all tensors (inf when names or shapes differ)."""
    differing: tuple[str, ...]
    """Names of tensors that differ (or are in only one of the two)."""


def compare_weights(built: Path, committed: Path) -> WeightComparison:
    """Compare every `*.safetensors` tensor of two stage folders."""
    names = sorted({p.name for p in (*built.glob("*.safetensors"), *committed.glob("*.safetensors"))})
    if not names:
        raise CommittedCheckpointError(f"no *.safetensors file in {built} or {committed}")
    differing: list[str] = []
    worst, count = 0.0, 0
    for name in names:
        a = load_file(str(built / name)) if (built / name).is_file() else {}
        b = load_file(str(committed / name)) if (committed / name).is_file() else {}
        for tensor in sorted(set(a) | set(b)):
            count += 1
            x, y = a.get(tensor), b.get(tensor)
            if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype:
                differing.append(f"{name}:{tensor}")
                worst = float("inf")
                continue
            if not torch.equal(x, y):
                differing.append(f"{name}:{tensor}")
                worst = max(worst, (x.double() - y.double()).abs().max().item())
    return WeightComparison(not differing, count, worst, tuple(differing))
