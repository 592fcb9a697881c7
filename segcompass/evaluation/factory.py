"""Predictors by name: the trivial baselines, the oracle, or a trained checkpoint.

A checkpoint is loaded through ``segcompass.training.load_predictor(path)`` (the training package), imported
only when a checkpoint is asked for, so evaluation of the baselines works without it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from segcompass.evaluation.baselines import EmptyPredictor, OraclePredictor, UnionOfObjectsPredictor
from segcompass.evaluation.predictor import Predictor

PredictorKind = Literal["checkpoint", "union", "empty", "oracle"]
PREDICTOR_KINDS: tuple[str, ...] = ("checkpoint", "union", "empty", "oracle")


class PredictorUnavailableError(ValueError):
    """The predictor cannot be built here (e.g. the checkpoint loader is not installed)."""


def load_checkpoint_predictor(path: str | Path) -> Predictor:
    """A trained SegCompass model from a checkpoint, via ``segcompass.training.load_predictor``."""
    if not str(path):
        raise ValueError("--predictor checkpoint needs --checkpoint PATH")
    ckpt = Path(path)
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    try:  # optional and heavy: imported only here
        training = importlib.import_module("segcompass.training")
    except ModuleNotFoundError as e:
        if e.name != "segcompass.training":
            raise
        raise PredictorUnavailableError(
            "cannot load a checkpoint: the training package segcompass.training (which provides "
            "load_predictor) is not installed in this checkout"
        ) from e
    loader = getattr(training, "load_predictor", None)
    if loader is None:
        raise PredictorUnavailableError(
            "segcompass.training has no load_predictor(path); cannot load a checkpoint"
        )
    predictor = loader(ckpt)
    if not isinstance(predictor, Predictor):
        raise TypeError(
            f"segcompass.training.load_predictor returned {type(predictor).__name__}, not a Predictor"
        )
    return predictor


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
