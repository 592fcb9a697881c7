"""`warm:<family>`: the tiny preset warmed up on the synthetic world, looked up as a cached stage.

Loading never trains: a missing warm-up raises `StageMissing` naming the command that builds it
(`segcompass warmup`). The stage's identity (name, version, config → key, folder) lives here, beside the
loader; `segcompass.warmup` supplies the build (training + held-out evaluation) under the same identity.

Folders: `<cache root>/backbones/backbone-warmup-<sha>/` (`segcompass.stages`). Folders of the previous
layout (`<cache root>/backbones/<family>-<sha>/`, or `$SEGCOMPASS_CACHE/<family>-<sha>/`) still load.
"""

from __future__ import annotations

import os
from pathlib import Path

from segcompass.stages import Stage, StageMissing, find_stage, resolve_root

from .backbone import METADATA_FILE, Backbone
from .registry import load_backbone
from .warm_config import WARMUP_VERSION, WarmupConfig

WARMUP_COMMAND = "segcompass warmup"
"""The command that builds a warm-up (`--family`, `--seed` and the config's other fields as flags)."""
LEGACY_FILES = ("config.json", METADATA_FILE, "warmup_config.json", "warmup_eval.csv")
"""What a finished folder of the previous cache layout holds."""


def _build_with_segcompass_warmup(config: WarmupConfig, folder: Path) -> None:
    raise StageMissing(f"the warm-up is built by `{WARMUP_COMMAND}` (segcompass.warmup), not on load")


WARMUP_STAGE: Stage[WarmupConfig] = Stage(
    "backbone-warmup", WARMUP_VERSION, _build_with_segcompass_warmup, WARMUP_COMMAND, subdir="backbones"
)
"""The warm-up's identity; `segcompass.warmup.WARMUP_BUILD` is the same stage with its build."""


def build_command(config: WarmupConfig) -> str:
    """The command line that builds `config`'s warm-up (flags for the family and seed)."""
    k = "" if config.num_slots == WarmupConfig.num_slots else f" --num-slots {config.num_slots}"
    return f"{WARMUP_COMMAND} --family {config.family} --seed {config.seed}{k}"


def legacy_folders(config: WarmupConfig, cache_root: str | os.PathLike | None = None) -> list[Path]:
    """Where the previous cache layout kept `config`'s warm-up."""
    root = resolve_root(cache_root)
    return [root / "backbones" / config.key(), root / config.key()]


def warm_folder(config: WarmupConfig, cache_root: str | os.PathLike | None = None) -> Path:
    """The built folder of `config`'s warm-up (new layout, else the previous one); `StageMissing` naming
    the command that builds it otherwise. Never trains."""
    return find_stage(
        WARMUP_STAGE, config, cache_root,
        legacy=legacy_folders(config, cache_root),
        legacy_complete=lambda old: all((old / f).exists() for f in LEGACY_FILES),
        missing=f"the warmed-up {config.family} backbone (seed {config.seed}, K {config.num_slots}) is not built "
        f"yet ({WARMUP_STAGE.path(config, cache_root)}); build it with `{build_command(config)}`",
    )  # fmt: skip


def warm_config(spec: str, *, seed: int = 0, num_slots: int | None = None) -> WarmupConfig:
    """The warm-up a `warm:<family>` spec names: the default one of that family with `seed`, taught to
    emit `num_slots` `<REF_POS>` (the policy's K; None: the warm-up's default)."""
    family = spec.removeprefix("warm:") or "qwen2_5_vl"
    k = {} if num_slots is None else {"num_slots": num_slots}
    return WarmupConfig(family=family, seed=seed, **k)


def load_warm(spec: str, *, seed: int = 0, num_slots: int | None = None, **load_kwargs) -> Backbone:
    """`warm:<family>` → the built warm-up `warm_config` names, loaded through `load_backbone`."""
    return load_backbone(warm_folder(warm_config(spec, seed=seed, num_slots=num_slots)), **load_kwargs)
