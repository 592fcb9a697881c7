"""`HeadInputs` from a trained `SegCompassModel`: greedy rollout → the one policy forward → head inputs.

`segcompass.model.load_model` returns the model; `TrainedModelInputs(model)` gives the provenance
command (and notebooks) what they need: `.head` and `.head_inputs(samples)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from analysis.attribution.head_inputs import HeadInputs, TokenInfo
from segcompass.data import RefSample
from segcompass.policy import generate_rollouts, policy_forward


class TrainedModelInputs:
    """Adapter of a `segcompass.model.SegCompassModel` to the analyses' `ProvenanceModel` interface."""

    def __init__(self, model: Any):
        self.model = model.eval()

    @property
    def head(self):
        return self.model.head

    @torch.no_grad()
    def head_inputs(self, samples: Sequence[RefSample]) -> HeadInputs:
        """Greedy responses for `samples`, their hook / concentration states, SAM embeddings and targets."""
        model = self.model
        images = [s.load_image() for s in samples]
        rollouts = generate_rollouts(
            model.backbone, images, [s.text for s in samples], model.policy, greedy=True
        )
        states = policy_forward(model.backbone, rollouts, model.policy)
        cfg = model.head.cfg
        targets = [s.sam_targets(cfg.sam_encoder.img_size, cfg.heatmap_size)[0] for s in samples]
        ids = rollouts.full_inputs()["input_ids"]
        tok = model.backbone.tokenizer
        tokens = [
            TokenInfo(
                rollouts.token_types[b].numpy(),
                rollouts.image_rc[b].numpy(),
                rollouts.geometries[b],
                [tok.decode([i]) for i in ids[b].tolist()],
            )
            for b in range(len(samples))
        ]
        return HeadInputs(
            hook_states=states.hook_states,
            concentration_states=states.concentration_states,
            image_embeddings=model.head.embed_images(images).float(),
            concept_token_mask=states.concept_token_mask,
            targets=targets,
            tokens=tokens,
            images=[np.asarray(im) for im in images],
            sample_ids=[s.sample_id for s in samples],
        )
