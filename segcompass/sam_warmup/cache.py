"""The warmed-up tiny SAMs as a cached stage (`segcompass.stages`): one folder per config, built once,
published atomically.

Layout of `<cache root>/sam/tiny-sam-<sha>/`::

    sam.safetensors        a SAM checkpoint (image_encoder.*, prompt_encoder.*, mask_decoder.*) that
                           `SegCompassHead.load_sam_weights` reads like the real one
    sam_warmup_config.json the SamWarmupConfig (with sam_warmup_version)
    sam_warmup_eval.json   held-out IoU at eval_size² per prompt (point, heatmap, blob): trained,
                           random-init control, the prompt alone (`evaluate.py`)
    sam_warmup_train.json  loss per step, wall time
    stage.json             the stage record (written last)

`tiny_sam` builds what is missing (and logs it); `resolve_sam("warm")` only looks it up (`StageMissing`
names `segcompass warmup-sam`). Folders of the previous layout (`<cache root>/sam/tiny_sam-<sha>/`) still load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file

from segcompass.stages import Stage, StageMissing, default_cache_root, ensure_stage, find_stage, resolve_root

from .config import SAM_WARMUP_VERSION, SamWarmupConfig
from .evaluate import evaluate_sam
from .train import train

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "sam.safetensors"
CONFIG_FILE = "sam_warmup_config.json"
EVAL_FILE = "sam_warmup_eval.json"
TRAIN_FILE = "sam_warmup_train.json"
SAM_WARMUP_COMMAND = "segcompass warmup-sam"
"""The command that builds a tiny SAM (`--seed` and the config's other fields as flags)."""


@dataclass
class SamWarmupArtifact:
    """A cached tiny SAM: where its checkpoint lives and its records."""

    path: Path
    """The cache folder."""
    config: SamWarmupConfig
    """The config it was trained with."""
    evaluation: dict
    """Held-out mean IoU per prompt kind (`point`, `heatmap`, `blob`), each {`trained`, `control` (random
    init), `prompt_only`}, with `instances`, `scenes`, `eval_size` (`evaluate.evaluate_sam`)."""
    train_info: dict
    """Losses per step, wall_s, scene_s."""
    cached: bool
    """True when this call found the folder instead of training."""

    @property
    def checkpoint(self) -> Path:
        """The SAM-format checkpoint (`build_head(..., sam_checkpoint=...)`)."""
        return self.path / CHECKPOINT_FILE


def default_cache_dir() -> Path:
    """`$SEGCOMPASS_CACHE/sam` or `~/.cache/segcompass/sam`: where the tiny SAMs live."""
    return default_cache_root() / "sam"


def is_complete(path: Path) -> bool:
    """True when `path` holds a finished warm-up (either layout; only ever renamed into place when complete)."""
    return all((path / f).exists() for f in (CHECKPOINT_FILE, CONFIG_FILE, EVAL_FILE))


def load_artifact(path: str | os.PathLike) -> SamWarmupArtifact:
    """Read a finished cache folder."""
    path = Path(path)
    if not is_complete(path):
        raise StageMissing(f"{path} is not a finished tiny-SAM warm-up folder")
    train_file = path / TRAIN_FILE
    return SamWarmupArtifact(
        path=path,
        config=SamWarmupConfig.from_json((path / CONFIG_FILE).read_text()),
        evaluation=json.loads((path / EVAL_FILE).read_text()),
        train_info=json.loads(train_file.read_text()) if train_file.exists() else {},
        cached=True,
    )


def _build(config: SamWarmupConfig, folder: Path, *, progress: bool = True) -> None:
    """The stage's build: train, evaluate beside the random-init control, save into `folder`."""
    result = train(config, progress=progress)
    evaluation = evaluate_sam(result.model, config)
    info = {
        "steps": config.steps,
        "wall_s": result.wall_s,
        "scene_s": result.scene_s,
        "losses": result.losses,
    }
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(folder / CHECKPOINT_FILE), metadata={"sam_warmup": config.key()})
    (folder / CONFIG_FILE).write_text(config.to_json())
    (folder / EVAL_FILE).write_text(json.dumps(evaluation, indent=2))
    (folder / TRAIN_FILE).write_text(json.dumps(info))


SAM_STAGE: Stage[SamWarmupConfig] = Stage(
    "tiny-sam", SAM_WARMUP_VERSION, _build, SAM_WARMUP_COMMAND, subdir="sam", resumable=True
)
"""The tiny-SAM warm-up stage: built in `<key>.partial` under a lock, its training loop checkpointed, so an
interrupted build continues where it stopped (`segcompass.loop_checkpoints`)."""

COMMITTABLE = {SAM_STAGE.name: (SAM_STAGE, lambda config: SamWarmupConfig(**config))}
"""The stage `segcompass warmup-sam --reproduce` rebuilds, with its config from a `stage.json`."""


def sam_folder(config: SamWarmupConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """The built folder of `config`'s tiny SAM (new layout, else the previous one under `<root>/sam/`);
    `StageMissing` naming the command that builds it otherwise. Never trains."""
    return find_stage(
        SAM_STAGE, config, cache_dir,
        legacy=[resolve_root(cache_dir) / SAM_STAGE.subdir / config.key()], legacy_complete=is_complete,
        missing=f"the tiny SAM (seed {config.seed}) is not built yet ({SAM_STAGE.path(config, cache_dir)}); "
        f"build it with `{SAM_WARMUP_COMMAND} --seed {config.seed}`",
    )  # fmt: skip


def tiny_sam(
    config: SamWarmupConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> SamWarmupArtifact:
    """The warmed-up tiny SAM of `config`: built once if missing (minutes on 2 CPU cores; logged), then read.
    `cache_dir` is the cache root (default `$SEGCOMPASS_CACHE` or `~/.cache/segcompass`)."""
    stage = dataclasses.replace(SAM_STAGE, build=functools.partial(_build, progress=progress))
    path, cached = ensure_stage(stage, config or SamWarmupConfig(), cache_dir, find=sam_folder, force=force)
    artifact = load_artifact(path)
    artifact.cached = cached
    return artifact


def ensure_sam(spec: str, *, seed: int = 0) -> None:
    """Build the tiny SAM a `warm` SAM spec names if it is missing (and say so); other specs need nothing."""
    if spec in ("warm", "warm:tiny_sam"):
        tiny_sam(SamWarmupConfig(seed=seed))


def resolve_sam(spec: str, *, seed: int = 0) -> tuple[Path | None, SamWarmupConfig | None]:
    """A SAM spec → (checkpoint path, warm-up config when it is one).

    `""` or `"random"`: no checkpoint (random init); `"warm"` / `"warm:tiny_sam"`: the default tiny-SAM
    warm-up with `seed` (must be built: `StageMissing` names `segcompass warmup-sam`; `ensure_sam` builds
    it); anything else: a checkpoint file the user names.
    """
    if spec in ("", "random"):
        return None, None
    if spec in ("warm", "warm:tiny_sam"):
        art = load_artifact(sam_folder(SamWarmupConfig(seed=seed)))
        return art.checkpoint, art.config
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"SAM checkpoint not found: {p} (use 'warm' for the tiny-SAM warm-up, '' for none)"
        )
    return p, None
