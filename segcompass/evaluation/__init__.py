"""One evaluation entry point for every data set and every model (issue #7, docs/design.md §5 and §8).

::

    from segcompass.data import GRefCocoDataset
    from segcompass.evaluation import EvalConfig, evaluate, evaluate_many, EmptyPredictor, UnionOfObjectsPredictor

    ds = GRefCocoDataset("grefs(unc).json", "instances.json", "images", split="val")
    res = evaluate(model, ds, EvalConfig(convention="both", out_dir="runs/eval", checkpoint="ckpt", step=500))
    table = evaluate_many([model, EmptyPredictor(), UnionOfObjectsPredictor(ds)], ds)

- :class:`Predictor` / :class:`Prediction` — what a model provides (slot masks in the head's frame).
- :func:`evaluate` → :class:`EvalResult`; :func:`evaluate_many` → a side-by-side table.
- :func:`calibrate_thresholds` → :class:`Calibration` — mask / confidence thresholds chosen on held-out data.
- Baselines: :class:`EmptyPredictor`, :class:`UnionOfObjectsPredictor`, :class:`OraclePredictor`.
- :func:`head_to_image_frame` / :func:`image_to_head_frame` — the letterbox and its inverse.
- :func:`open_dataset`, :func:`build_predictor` — what the ``segcompass evaluate`` command line uses.
"""

from segcompass.evaluation.baselines import (
    EmptyPredictor,
    OraclePredictor,
    UnionOfObjectsPredictor,
    UnsupportedDatasetError,
)
from segcompass.evaluation.calibrate import Calibration, calibrate_thresholds
from segcompass.evaluation.config import EvalConfig, EvalResult
from segcompass.evaluation.datasets import open_dataset
from segcompass.evaluation.factory import (
    PREDICTOR_KINDS,
    PredictorUnavailableError,
    build_predictor,
    load_checkpoint_predictor,
)
from segcompass.evaluation.frames import head_to_image_frame, image_to_head_frame
from segcompass.evaluation.predictor import Prediction, Predictor
from segcompass.evaluation.run import evaluate, evaluate_many

__all__ = [
    "PREDICTOR_KINDS",
    "Calibration",
    "EmptyPredictor",
    "EvalConfig",
    "EvalResult",
    "OraclePredictor",
    "Prediction",
    "Predictor",
    "PredictorUnavailableError",
    "UnionOfObjectsPredictor",
    "UnsupportedDatasetError",
    "build_predictor",
    "calibrate_thresholds",
    "evaluate",
    "evaluate_many",
    "head_to_image_frame",
    "image_to_head_frame",
    "load_checkpoint_predictor",
    "open_dataset",
]
