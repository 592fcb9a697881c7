"""The trained model as an evaluation `Predictor`: greedy decoding, one forward, the head's masks."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from sae.token_types import TokenType
from segcompass.data import RefSample
from segcompass.evaluation.predictor import Prediction
from segcompass.head.image_encoder import ImageEmbeddingCache
from segcompass.model import SegCompassModel, load_model
from segcompass.policy import generate_rollouts
from segcompass.rewards import FormatRewardConfig, format_reward


class SegCompassPredictor:
    """`Predictor` over a `SegCompassModel`: greedy, deterministic (docs/design.md §4, decisions)."""

    name = "segcompass"

    def __init__(self, model: SegCompassModel, embedding_cache: ImageEmbeddingCache | None = None,
                 step: int | None = None):  # fmt: skip
        self.model = model.eval()
        self.cache = embedding_cache
        self.step = step

    @torch.no_grad()
    def predict(self, samples: Sequence[RefSample]) -> list[Prediction]:
        images = [s.load_image() for s in samples]
        texts = [s.text for s in samples]
        model = self.model
        rollouts = generate_rollouts(model.backbone, images, texts, model.policy, greedy=True)
        emb = model.head.embed_images(images, self.cache)  # [B, 256, g, g]
        out = model(rollouts, emb).head
        # probabilities [B, K, S, S]: the evaluation's mask_threshold cuts them
        masks = torch.sigmoid(out.slot_masks.float())
        conf = out.slot_confidence  # [B, K]
        cot = rollouts.cot_lengths()
        found = rollouts.token_types == TokenType.CONCENTRATION  # [B, P + R]
        fmt_cfg = FormatRewardConfig()
        preds = []
        for i, s in enumerate(samples):
            fmt = format_reward(rollouts.texts[i], fmt_cfg, expected_tokens=model.policy.head_slots)
            preds.append(
                Prediction(
                    sample_id=s.sample_id,
                    slot_masks=masks[i].cpu(),
                    slot_confidence=conf[i].float().cpu(),
                    response=rollouts.texts[i],
                    extras={
                        "format_reward": fmt.reward,
                        "cot_tokens": float(cot[i]),
                        "concentration_found": float(found[i].sum()),
                    },
                )
            )
        return preds


def load_predictor(path: str | os.PathLike) -> SegCompassPredictor:
    """A `Predictor` from a saved model folder (a run folder resolves to its `final/`)."""
    model = load_model(path)
    meta_path = Path(path) / "final" / "segcompass_model.json"
    meta_path = meta_path if meta_path.exists() else Path(path) / "segcompass_model.json"
    step = json.loads(meta_path.read_text()).get("step")
    return SegCompassPredictor(model, step=step)
