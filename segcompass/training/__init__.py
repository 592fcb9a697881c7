"""Joint training of the whole SegCompass model through the library API (docs/design.md §4).

GRPO on the policy (group-normalised advantages, clipped ratio, k3 KL to a frozen reference) plus the
head's supervision, in one compact loop whose pieces are tested against hand-computed cases (see the
README's design notes for why not TRL)::

    model = build_model("tiny:qwen2_5_vl", sae_path, seed=0, policy=PolicyConfig())   # K: the policy's
    result = train_joint(JointTrainConfig.cpu_tiny(out="runs/joint"), model, dataset)
    predictor = load_predictor("runs/joint")        # → segcompass.evaluation.evaluate(predictor, val_set)
"""

# The model and its predictor live in segcompass.model and segcompass.evaluation; they are re-exported here
# because the README's training example has always imported them from this package.
from segcompass.evaluation.model_predictor import SegCompassPredictor, load_predictor
from segcompass.model import LoraSettings, ModelOutput, SegCompassModel, head_config_from_dict, load_model

from .batches import DataCursor, SampleSource, TrainSample, shard_for_rank
from .checkpoint import fingerprint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import JointTrainConfig
from .head_warmup import HeadWarmupConfig, warm_start_head
from .loop import TrainResult, build_reference, setup_trainable, train_joint
from .step import StepResult, joint_step, score_responses

__all__ = [
    "DataCursor",
    "HeadWarmupConfig",
    "JointTrainConfig",
    "LoraSettings",
    "ModelOutput",
    "SampleSource",
    "SegCompassModel",
    "SegCompassPredictor",
    "StepResult",
    "TrainResult",
    "TrainSample",
    "build_reference",
    "fingerprint",
    "head_config_from_dict",
    "joint_step",
    "list_checkpoints",
    "load_checkpoint",
    "load_model",
    "load_predictor",
    "save_checkpoint",
    "score_responses",
    "setup_trainable",
    "shard_for_rank",
    "train_joint",
    "warm_start_head",
]
