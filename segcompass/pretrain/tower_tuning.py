"""The vision tower and merger tuned through the frozen language model on questions about images.

Stage 0 leaves a language model that reads the oracle image tokens (each token its object's vector) at
colour 0.98 / shape 0.95; stage 1's tower, with the merger fitted to those tokens (`align.py`), gives it
tokens it reads far worse (results/warmup.md, session (7)). Here the gradient of the answers — and of the
grounding objective, which asks the answer to attend to the named object's tokens — flows through the frozen
language model into the tower and merger, so the tower learns what the reader needs, with an optional
regression to the oracle tokens keeping them in the reader's input distribution. Stands in for the stage of
Qwen2-VL's training in which the ViT is trained on image–text data under a frozen language model.

Measured (results/warmup.md, session (8)): 600 steps lift the answers on images before stage 3 (colour
0.52 → 0.73, position 0.28 → 0.43), but stage 3 after 1000 steps of it ends where stage 3 after the fit alone
does, so it is off by default (`StackConfig.tower_tuning`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from segcompass.backbones import Backbone

from .dialogue import Dialogue
from .grounding import (
    Grounding,
    capture_attention_inputs,
    every_head_of_layers_2_3,
    grounding_loss,
    grounding_targets,
)
from .language import answer_loss, encode_dialogues
from .object_vectors import ObjectVectorCache
from .optim import LoopRecord, Schedule, run_loop, train_only
from .pool import ScenePool
from .text import LOOKUP_KINDS, RecallPhase, recall_turns


@dataclass
class TowerTuning:
    """Stage 2's tuning of the tower and merger through the frozen language model, after the merger fit
    (`StackConfig.tower_tuning`; 0 steps: none)."""

    schedule: Schedule = field(default_factory=lambda: Schedule(steps=0, batch_size=32, lr=5e-4))
    """Optimiser of the tower and merger (0 steps: the fit alone)."""
    questions: int = 3
    """Question turns per sequence (whole train scenes, stage 0's image-layout questions)."""
    kinds: tuple[str, ...] = (*LOOKUP_KINDS, "count")
    """Question kinds, drawn uniformly (`text.QUESTION_KINDS`: no "describe" or format turns)."""
    grounding: Grounding = field(default_factory=every_head_of_layers_2_3)
    """The answers about a named object attend to its tokens; the gradient reaches the tokens as keys."""
    oracle_weight: float = 1.0
    """Weight of the regression of the image tokens to the oracle tokens (`relative_token_error`)."""

    def __post_init__(self) -> None:
        if isinstance(self.schedule, dict):
            self.schedule = Schedule(**self.schedule)
        if isinstance(self.grounding, dict):
            self.grounding = Grounding(**self.grounding)
        self.kinds = tuple(self.kinds)
        self.turns()  # checks the question count and kinds
        if self.oracle_weight < 0:
            raise ValueError(f"oracle_weight must be >= 0, got {self.oracle_weight}")

    def turns(self) -> RecallPhase:
        """The turn spec `text.recall_turns` reads."""
        phase = RecallPhase(self.schedule, (1, 1), self.questions, self.kinds)
        if {"format", "grounded_format", "describe"} & set(self.kinds):
            raise ValueError(f"tower tuning asks questions only; got kinds {self.kinds}")
        return phase


class TowerFeatures:
    """`FeatureCache`'s interface with the tower run live: `get(indices)` → one [cells_i, D] tensor per scene,
    the merged image tokens with their gradient (nothing is cached: the tower is training)."""

    def __init__(self, backbone: Backbone, pool: ScenePool) -> None:
        self.backbone, self.pool = backbone, pool

    def get(self, indices: list[int]) -> list[torch.Tensor]:
        visual = self.backbone.model.model.visual
        images = [self.pool[i].sample.image for i in indices]
        inputs = self.backbone.processor.image_processor(images=images, return_tensors="pt")
        grid = inputs["image_grid_thw"]  # [B, 3] in patches
        cells = (grid.prod(-1) // 4).tolist()
        expected = [self.pool[i].grid[0] * self.pool[i].grid[1] for i in indices]
        if cells != expected:
            raise ValueError(
                f"the processor gives {cells} image tokens, the pool's grids {expected}: "
                "set the backbone's image pixels to the pool's (`set_image_pixels`)"
            )
        tokens = visual(inputs["pixel_values"].to(visual.dtype), grid_thw=grid).pooler_output  # [Σ cells, D]
        return list(torch.split(tokens, cells))


def relative_token_error(tokens: list[torch.Tensor], oracle: list[torch.Tensor]) -> torch.Tensor:
    """‖tokens − oracle‖² / ‖oracle‖² over every cell of the batch (the regression `align.py` fits)."""
    got, want = torch.cat(tokens), torch.cat(oracle)  # [Σ cells, D]
    return (got - want).pow(2).sum() / want.pow(2).sum().clamp_min(1e-12)


def tune_tower(
    backbone: Backbone,
    pool: ScenePool,
    schedule: Schedule,
    make_dialogue: Callable[[int, np.random.Generator], Dialogue],
    seed: int,
    grounding: Grounding | None = None,
    oracle_weight: float = 0.0,
    progress: bool = True,
) -> LoopRecord:
    """Train the vision tower and merger (the language model frozen) on dialogues drawn by
    `make_dialogue(scene, rng)`: the answers' loss, plus `grounding` (answers attend to the named object's
    tokens), plus `oracle_weight` × `relative_token_error` against the pool's oracle tokens."""
    model = backbone.model
    visual = model.model.visual
    train_only(model, [visual])
    features = TowerFeatures(backbone, pool)
    oracle = ObjectVectorCache(backbone, pool)
    ground = grounding is not None and grounding.weight > 0

    def step_loss(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        picks = rng.choice(len(pool), size=schedule.batch_size, replace=schedule.batch_size > len(pool))
        dialogues = [make_dialogue(int(i), rng) for i in picks]
        batch = encode_dialogues(backbone, pool, dialogues)
        tokens = features.get(batch.images)  # [cells_i, D] each, with the tower's gradient
        cached = _Fixed(tokens)
        parts: dict[str, float] = {}
        if ground:
            targets = grounding_targets(backbone, pool, dialogues, batch.inputs["input_ids"], batch.labels)
            with capture_attention_inputs(backbone, grounding.layers) as captured:
                loss = answer_loss(backbone, batch, cached)
            attend = grounding_loss(
                backbone, captured, batch.inputs["attention_mask"], targets, grounding.heads
            )
            parts["lm"], parts["grounding"] = float(loss.detach()), float(attend.detach())
            loss = loss + grounding.weight * attend
        else:
            loss = answer_loss(backbone, batch, cached)
            parts["lm"] = float(loss.detach())
        if oracle_weight > 0:
            error = relative_token_error(tokens, oracle.get(batch.images))
            parts["oracle"] = float(error.detach())
            loss = loss + oracle_weight * error
        return loss, parts

    record = run_loop(
        [visual], schedule, step_loss, seed, "stage 2: tower through the language model", progress
    )
    train_only(model, [])
    return record


def tune_tower_on_questions(
    backbone: Backbone, pool: ScenePool, tuning: TowerTuning, seed: int, progress: bool = True
) -> LoopRecord:
    """`tune_tower` on `tuning`'s questions about the whole scenes of `pool`."""
    phase = tuning.turns()

    def make(scene: int, rng: np.random.Generator) -> Dialogue:
        return Dialogue(scene, recall_turns(pool[scene].sample, rng, phase))

    return tune_tower(
        backbone, pool, tuning.schedule, make, seed, tuning.grounding, tuning.oracle_weight, progress
    )


class _Fixed:
    """A batch's already computed image tokens behind `FeatureCache.get` (in the batch's image order)."""

    def __init__(self, tokens: list[torch.Tensor]) -> None:
        self.tokens = tokens

    def get(self, indices: list[int]) -> list[torch.Tensor]:
        if len(indices) != len(self.tokens):
            raise ValueError(f"{len(indices)} images asked for, {len(self.tokens)} computed")
        return self.tokens
