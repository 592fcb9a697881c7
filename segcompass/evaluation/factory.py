"""Predictors by name: the trivial baselines, the oracle, or a trained checkpoint.

A checkpoint is loaded through `segcompass.evaluation.model_predictor.load_predictor(path)`, imported only
when a checkpoint is asked for, so evaluating the baselines does not load the model's code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from segcompass.evaluation.baselines import EmptyPredictor, OraclePredictor, UnionOfObjectsPredictor
from segcompass.evaluation.predictor import Predictor

PredictorKind = Literal["checkpoint", "union", "empty", "oracle"]
PREDICTOR_KINDS: tuple[str, ...] = ("checkpoint", "union", "empty", "oracle")


class PredictorUnavailableError(ValueError):
    """The predictor cannot be built here. (Kept for callers that catch it: since the model has its own home,
    `segcompass.model`, a checkpoint predictor is always available.)"""


def load_checkpoint_predictor(path: str | Path) -> Predictor:
    """A trained SegCompass model from a checkpoint, via `segcompass.evaluation.model_predictor.load_predictor`."""
    if not str(path):
        raise ValueError("--predictor checkpoint needs --checkpoint PATH")
    ckpt = Path(path)
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    from segcompass.evaluation.model_predictor import load_predictor  # heavy (the model): only when asked

    return load_predictor(ckpt)


def build_predictor(kind: str, dataset: Any = None, checkpoint: str | Path = "") -> Predictor:
    """``checkpoint`` (needs ``checkpoint``), ``union`` (needs the ``dataset``), ``empty`` or ``oracle``."""
    if kind == "empty":
        return EmptyPredictor()
    if kind == "oracle":
        return OraclePredictor()
    if kind == "union":
        return UnionOfObjectsPredictor(dataset)
    if kind == "checkpoint":
        return load_checkpoint_predictor(checkpoint)
    raise ValueError(f"unknown predictor {kind!r}; expected one of {', '.join(PREDICTOR_KINDS)}")
