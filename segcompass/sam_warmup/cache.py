"""The on-disk cache of warmed-up tiny SAMs: one folder per config, written atomically.

Layout of `<cache_dir>/tiny_sam-<sha256(config json)[:16]>/`::

    sam.safetensors        a SAM checkpoint (image_encoder.*, prompt_encoder.*, mask_decoder.*) that
                           `SegCompassHead.load_sam_weights` reads like the real one
    sam_warmup_config.json the SamWarmupConfig (with sam_warmup_version)
    sam_warmup_eval.json   held-out prompted IoU: trained, random-init control, the prompt itself
    sam_warmup_train.json  loss per step, wall time
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from segcompass.warmup.cache import publish_folder

from .config import SamWarmupConfig
from .train import TinySam, prompt_only_iou, prompted_iou, scene_tensors, train

logger = logging.getLogger(__name__)

CACHE_ENV = "SEGCOMPASS_CACHE"
"""Environment variable that moves the cache root (default `~/.cache/segcompass`)."""
CHECKPOINT_FILE = "sam.safetensors"
CONFIG_FILE = "sam_warmup_config.json"
EVAL_FILE = "sam_warmup_eval.json"
TRAIN_FILE = "sam_warmup_train.json"


@dataclass
class SamWarmupArtifact:
    """A cached tiny SAM: where its checkpoint lives and its records."""

    path: Path
    """The cache folder."""
    config: SamWarmupConfig
    """The config it was trained with."""
    evaluation: dict
    """Held-out mean IoU of the centre-blob prompt: `trained`, `control` (random init), `prompt_only`."""
    train_info: dict
    """Losses per step, wall_s, scene_s."""
    cached: bool
    """True when this call found the folder instead of training."""

    @property
    def checkpoint(self) -> Path:
        """The SAM-format checkpoint (`build_head(..., sam_checkpoint=...)`)."""
        return self.path / CHECKPOINT_FILE


def default_cache_dir() -> Path:
    """`$SEGCOMPASS_CACHE/sam` or `~/.cache/segcompass/sam`."""
    env = os.environ.get(CACHE_ENV)
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "segcompass") / "sam"


def is_complete(path: Path) -> bool:
    """True when `path` holds a finished warm-up (only ever renamed into place when complete)."""
    return all((path / f).exists() for f in (CHECKPOINT_FILE, CONFIG_FILE, EVAL_FILE))


def load_artifact(path: str | os.PathLike) -> SamWarmupArtifact:
    """Read a finished cache folder."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a finished tiny-SAM warm-up folder")
    train_file = path / TRAIN_FILE
    return SamWarmupArtifact(
        path=path,
        config=SamWarmupConfig.from_json((path / CONFIG_FILE).read_text()),
        evaluation=json.loads((path / EVAL_FILE).read_text()),
        train_info=json.loads(train_file.read_text()) if train_file.exists() else {},
        cached=True,
    )


def evaluate_sam(model: TinySam, config: SamWarmupConfig) -> dict:
    """Held-out mean IoU under the centre-blob prompt, beside a random-init control and the prompt itself."""
    val = scene_tensors(config, "val", config.val_scenes)
    torch.manual_seed(config.seed + 1)
    control = TinySam(config).eval()
    return {
        "instances": int(sum(len(m) for m in val.masks)),
        "trained": float(prompted_iou(model, val).mean()),
        "control": float(prompted_iou(control, val).mean()),
        "prompt_only": float(prompt_only_iou(val).mean()),
    }


def tiny_sam(
    config: SamWarmupConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> SamWarmupArtifact:
    """The warmed-up tiny SAM of `config`: trained once (minutes on 2 CPU cores), then read from the cache."""
    config = config or SamWarmupConfig()
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = root / config.key()
    if is_complete(path) and not force:
        logger.info("tiny-SAM cache hit: %s", path)
        return load_artifact(path)
    logger.info("tiny-SAM cache miss: training %s into %s", config.key(), path)
    result = train(config, progress=progress)
    evaluation = evaluate_sam(result.model, config)
    info = {
        "steps": config.steps,
        "wall_s": result.wall_s,
        "scene_s": result.scene_s,
        "losses": result.losses,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
        save_file(state, str(tmp / CHECKPOINT_FILE), metadata={"sam_warmup": config.key()})
        (tmp / CONFIG_FILE).write_text(config.to_json())
        (tmp / EVAL_FILE).write_text(json.dumps(evaluation, indent=2))
        (tmp / TRAIN_FILE).write_text(json.dumps(info))
        publish_folder(tmp, path, replace=force, complete=is_complete)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    artifact = load_artifact(path)
    artifact.cached = False
    return artifact


def resolve_sam(spec: str, *, seed: int = 0) -> tuple[Path | None, SamWarmupConfig | None]:
    """A SAM spec → (checkpoint path, warm-up config when it is one).

    `""` or `"random"`: no checkpoint (random init); `"warm"` / `"warm:tiny_sam"`: the default tiny-SAM
    warm-up with `seed` (built on first use); anything else: a checkpoint file the user names.
    """
    if spec in ("", "random"):
        return None, None
    if spec in ("warm", "warm:tiny_sam"):
        art = tiny_sam(SamWarmupConfig(seed=seed))
        return art.checkpoint, art.config
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"SAM checkpoint not found: {p} (use 'warm' for the tiny-SAM warm-up, '' for none)"
        )
    return p, None
