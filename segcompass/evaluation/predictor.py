"""What an evaluated model must provide: `Predictor.predict(samples) -> list[Prediction]`.

The SegCompass model (policy + head), the trivial baselines and any user model implement the same
protocol, so one evaluation entry point scores all of them under the same metric conventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import Tensor

from segcompass.data.sample import RefSample


@dataclass
class Prediction:
    """One sample's prediction in the head's frame (longest side 1024, padded bottom/right, then S²).

    K = number of slots (any K ≥ 0), S = mask side (256 for the SegCompass head). Evaluation maps the
    masks back to the image's (H, W) before scoring (crop the unpadded part, resize).
    """

    sample_id: str
    """The `RefSample.sample_id` this prediction is for."""
    slot_masks: Tensor
    """[K, S, S] per-slot masks in the head's frame: bool, or probabilities (cut at the evaluation's
    mask_threshold, which `calibrate_thresholds` can choose)."""
    slot_confidence: Tensor
    """float [K] per-slot probabilities; a slot is used when ≥ the evaluation's confidence_threshold."""
    response: str = ""
    """The policy's decoded response (empty for models without a policy)."""
    extras: dict[str, float] = field(default_factory=dict)
    """Per-sample scalars to keep beside the metrics (format reward, CoT length, …)."""


@runtime_checkable
class Predictor(Protocol):
    """Anything that turns a batch of samples into one `Prediction` per sample, in order."""

    name: str
    """Short name written into the results (``segcompass``, ``union_baseline``, …)."""

    def predict(self, samples: Sequence[RefSample]) -> list[Prediction]: ...
