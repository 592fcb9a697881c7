"""The whole SegCompass model: the policy (a backbone) and the head as one module, its builder, save and load.

    model = build_model("stack:qwen2_5_vl", "runs/sae", seed=0, policy=PolicyConfig())   # backbone + SAE + head
    model.save("runs/model");  model = load_model("runs/model")

Training (`segcompass.training`), evaluation (`segcompass.evaluation`) and analysis import it from here.
"""

from .build import build_missing_stages, build_model, cpu_head_config, model_head_config
from .core import (
    MODEL_FILE,
    ModelOutput,
    SegCompassModel,
    head_config_from_dict,
    load_model,
    trainable_summary,
)
from .lora import LoraSettings

__all__ = [
    "MODEL_FILE",
    "LoraSettings",
    "ModelOutput",
    "SegCompassModel",
    "build_missing_stages",
    "build_model",
    "cpu_head_config",
    "head_config_from_dict",
    "load_model",
    "model_head_config",
    "trainable_summary",
]
