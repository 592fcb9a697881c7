"""Warm-up: a short supervised stage that teaches a tiny backbone the synthetic world.

Tasks (chat prompt with the image → response, loss on the response only): describe the scene, answer
attribute questions about a referred object (colour, shape, coarse position, counts), and emit the
SegCompass output format (``<think>reasoning</think>`` + K ``<REF_POS>``). The result is cached on disk
keyed by its config and loaded through `load_backbone`, like a real checkpoint::

    from segcompass.warmup import WarmupConfig, warm_up
    bb = warm_up(WarmupConfig())                       # builds once if missing (minutes on 2 cores), then loads
    bb = resolve_backbone("warm:qwen2_5_vl")           # loads the built one; never trains (StageMissing)

`segcompass warmup` builds it from the command line and prints the held-out evaluation
(trained vs random-init control, beside chance and majority rates).
"""

from segcompass.stages import CACHE_ENV

from .cache import (
    WARMUP_BUILD,
    WarmupArtifact,
    build_warm_up,
    cache_path,
    default_cache_dir,
    ensure_warm_backbone,
    load_artifact,
    resolve_warm,
    warm_up,
    warm_up_artifact,
)
from .config import TASKS, WARMUP_VERSION, WarmupConfig
from .encode import EncodedBatch, encode, mean_response_loss, response_loss, sequence_logprobs
from .evaluate import EvalSet, build_eval_set, evaluate, evaluate_with_control, format_ok
from .tasks import POSITIONS, QUESTION_TYPES, Example, format_response, make_example, question_example
from .train import TrainResult, build_scenes, train

__all__ = [
    "CACHE_ENV",
    "POSITIONS",
    "QUESTION_TYPES",
    "TASKS",
    "WARMUP_BUILD",
    "WARMUP_VERSION",
    "EncodedBatch",
    "EvalSet",
    "Example",
    "TrainResult",
    "WarmupArtifact",
    "WarmupConfig",
    "build_eval_set",
    "build_scenes",
    "build_warm_up",
    "cache_path",
    "default_cache_dir",
    "encode",
    "ensure_warm_backbone",
    "evaluate",
    "evaluate_with_control",
    "format_ok",
    "format_response",
    "load_artifact",
    "make_example",
    "mean_response_loss",
    "question_example",
    "resolve_warm",
    "response_loss",
    "sequence_logprobs",
    "train",
    "warm_up",
    "warm_up_artifact",
]
