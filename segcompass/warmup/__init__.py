"""Warm-up: a short supervised stage that teaches a tiny backbone the synthetic world.

Tasks (chat prompt with the image → response, loss on the response only): describe the scene, answer
attribute questions about a referred object (colour, shape, coarse position, counts), and emit the
SegCompass output format (``<think>reasoning</think>`` + K ``<REF_POS>``). The result is cached on disk
keyed by its config and loaded through `load_backbone`, like a real checkpoint::

    from segcompass.warmup import WarmupConfig, warm_up
    bb = warm_up(WarmupConfig())                       # trains once (minutes on 2 cores), then loads
    bb = resolve_backbone("warm:qwen2_5_vl")           # the same, through the backbone resolver

`segcompass-analyze warmup` builds it from the command line and prints the held-out evaluation
(trained vs random-init control, beside chance and majority rates).
"""

from .cache import (
    CACHE_ENV,
    WarmupArtifact,
    cache_path,
    default_cache_dir,
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
    "WARMUP_VERSION",
    "EncodedBatch",
    "EvalSet",
    "Example",
    "TrainResult",
    "WarmupArtifact",
    "WarmupConfig",
    "build_eval_set",
    "build_scenes",
    "cache_path",
    "default_cache_dir",
    "encode",
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
