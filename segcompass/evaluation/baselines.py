"""Trivial predictors that every trained model must beat, and an oracle for sanity checks.

- :class:`EmptyPredictor` — predicts nothing (one slot, confidence 0). Scores the no-target samples only.
- :class:`UnionOfObjectsPredictor` — one confident slot holding the union of *all* annotated objects of
  the image, referred or not (every annotation of the image in COCO ``instances.json``; in the synthetic
  world every object is an annotation). Needs a data set with ``image_instances(sample)``.
- :class:`OraclePredictor` — the GT union (a rejection, i.e. no confident slot, on no-target samples):
  gIoU = cIoU = 1 under both conventions for images whose longest side is ≤ ``img_size``. It scores the
  loader's own masks against themselves, so it checks the metrics, not the loader: a loader that misreads
  a file still scores 1. ``tests/test_data_real_files.py`` scores masks written down independently of the
  loaders (a predictor returning them) on files in the public layouts instead.

The image-frame masks are put into the head's frame at S = ``img_size`` (:func:`image_to_head_frame`,
exact round trip), so the baselines are scored on exactly their image-frame masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from segcompass.data.sample import RefSample
from segcompass.evaluation.frames import image_to_head_frame
from segcompass.evaluation.predictor import Prediction


class UnsupportedDatasetError(ValueError):
    """The data set cannot serve a predictor (e.g. the union baseline on data without non-target objects)."""


@runtime_checkable
class HasImageInstances(Protocol):
    """A data set that can list every annotated object of a sample's image."""

    def image_instances(self, sample: RefSample) -> np.ndarray:
        """Bool [N, H, W] masks of every annotated object of the sample's image."""
        ...


def _single_slot(mask: np.ndarray, confidence: float, img_size: int, sample_id: str) -> Prediction:
    return Prediction(
        sample_id=sample_id,
        slot_masks=image_to_head_frame(mask[None], img_size),
        slot_confidence=torch.tensor([confidence]),
    )


class EmptyPredictor:
    """Predicts no object: one slot with confidence 0 and an empty mask."""

    name = "empty_baseline"

    def __init__(self, mask_size: int = 256) -> None:
        self.mask_size = mask_size
        """S of the (empty) slot mask."""

    def predict(self, samples: Sequence[RefSample]) -> list[Prediction]:
        s = self.mask_size
        return [
            Prediction(s_.sample_id, torch.zeros(1, s, s, dtype=torch.bool), torch.zeros(1)) for s_ in samples
        ]


class UnionOfObjectsPredictor:
    """One confident slot = the union of every annotated object of the image, referred or not."""

    name = "union_baseline"

    def __init__(self, dataset: Any, img_size: int = 1024) -> None:
        """
        Args:
            dataset: the data set being evaluated; must have ``image_instances(sample) -> [N, H, W]``
                (the COCO-based loaders: refcoco, refcoco+, refcocog, grefcoco, the synthetic world).
            img_size: letterbox side; the slot mask is S = ``img_size`` (exact round trip).
        """
        if not isinstance(dataset, HasImageInstances):
            source = getattr(dataset, "source", type(dataset).__name__)
            why = (
                "ReasonSeg annotates only the target (and ignore) regions of an image, not its other objects"
                if "reasonseg" in str(source).lower() or type(dataset).__name__ == "ReasonSegDataset"
                else f"{type(dataset).__name__} does not provide image_instances(sample)"
            )
            raise UnsupportedDatasetError(
                f"the union-of-objects baseline is not supported on {source!r}: {why}. It needs every "
                "annotated object of each image (COCO instances.json: refcoco, refcoco+, refcocog, grefcoco, "
                "the synthetic world)"
            )
        self.dataset = dataset
        self.img_size = img_size

    def predict(self, samples: Sequence[RefSample]) -> list[Prediction]:
        out = []
        for s in samples:
            inst = np.asarray(self.dataset.image_instances(s), dtype=bool)
            if inst.shape[1:] != tuple(s.image_size):
                raise ValueError(
                    f"{s.sample_id}: image instances have size {inst.shape[1:]}, the sample {s.image_size}"
                )
            union = inst.any(axis=0) if len(inst) else np.zeros(s.image_size, dtype=bool)
            out.append(_single_slot(union, 1.0, self.img_size, s.sample_id))
        return out


class OraclePredictor:
    """The GT union as one confident slot; no confident slot on no-target samples (for sanity checks)."""

    name = "oracle"

    def __init__(self, img_size: int = 1024) -> None:
        self.img_size = img_size
        """Letterbox side; the slot mask is S = ``img_size`` (exact round trip)."""

    def predict(self, samples: Sequence[RefSample]) -> list[Prediction]:
        return [
            _single_slot(s.union_mask(), 0.0 if s.no_target else 1.0, self.img_size, s.sample_id)
            for s in samples
        ]
