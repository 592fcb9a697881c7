"""The warm-up's configuration (defined in `segcompass.backbones.warm_config`, where `warm:` looks it up)."""

from segcompass.backbones.warm_config import TASKS, WARMUP_VERSION, WarmupConfig

__all__ = ["TASKS", "WARMUP_VERSION", "WarmupConfig"]
