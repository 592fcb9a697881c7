"""Stages 2 and 3 — alignment and instruction tuning on dialogues (and the encoding stage 0 shares).

The vision tower and its merger are frozen after stage 1, so their output for each pool image is computed
once (`FeatureCache`) and handed to the model through transformers' `mm_encoder_outputs`; a training step
runs the language model only (or the merger and the frozen language model, when stage 2 trains the merger
alone). Positions (multimodal rotary ids) still come from the image grid. A dialogue with a text context
has no image: its words take the image's place, and a batch may mix both kinds of row.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from segcompass.backbones import Backbone

from .dialogue import Dialogue, Turn, assistant_labels, check_family, continuation, scene_text
from .grounding import Grounding, capture_attention_inputs, grounding_loss, grounding_targets
from .optim import LoopRecord, Schedule, run_loop, train_only
from .pool import ScenePool

logger = logging.getLogger(__name__)


class FeatureCache:
    """Merged image tokens of a pool's images under a frozen vision tower, computed once per image.

    With `live_merger` the cache holds what the tower gives the merger (each image token's 2 × 2 patch
    states, in token order) and `get` runs the merger on it, so the merger can be trained with the tower
    frozen (LLaVA's first stage trains only the projector)."""

    def __init__(
        self, backbone: Backbone, pool: ScenePool, batch_size: int = 32, live_merger: bool = False
    ) -> None:
        self.backbone, self.pool, self.batch_size = backbone, pool, batch_size
        self.live_merger = live_merger
        self._features: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def _compute(self, chunk: list[int]) -> list[torch.Tensor]:
        visual = self.backbone.model.model.visual
        images = [self.pool[i].sample.image for i in chunk]
        inputs = self.backbone.processor.image_processor(images=images, return_tensors="pt")
        grid = inputs["image_grid_thw"]
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        with contextlib.ExitStack() as stack:
            if self.live_merger:
                hook = visual.merger.register_forward_hook(lambda m, a, out: captured.append((a[0], out)))
                stack.callback(hook.remove)
            tokens = visual(inputs["pixel_values"].to(visual.dtype), grid_thw=grid).pooler_output
        if self.live_merger:  # the merger's input, [cells, 4, C], in the order of its output tokens
            patches, merged = captured[0]
            order = torch.cdist(tokens.float(), merged.float()).argmin(1)  # window order → token order
            tokens = patches.reshape(len(merged), -1, patches.shape[-1])[order]
        return list(torch.split(tokens, (grid.prod(-1) // 4).tolist()))

    def merger_inputs(self, indices: list[int]) -> list[torch.Tensor]:
        """[cells_i, 4, C] per index: what the frozen tower gives the merger (a `live_merger` cache)."""
        if not self.live_merger:
            raise ValueError("only a FeatureCache with live_merger=True keeps the merger's inputs")
        self._fill(indices)
        return [self._features[i] for i in indices]

    def _fill(self, indices: list[int]) -> None:
        missing = sorted({i for i in indices if i not in self._features})
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            for i, feats in zip(chunk, self._compute(chunk), strict=True):
                self._features[i] = feats.detach()

    def get(self, indices: list[int]) -> list[torch.Tensor]:
        """[cells_i, D] per index (computed for the missing ones in batches); with `live_merger`, the
        merger's output with its gradient."""
        self._fill(indices)
        if not self.live_merger:
            return [self._features[i] for i in indices]
        merger = self.backbone.model.model.visual.merger
        patches = self.merger_inputs(indices)  # [cells_i, 4, C] each
        merged = merger(torch.cat(patches).flatten(0, 1))  # [Σ cells_i, D]
        return list(torch.split(merged, [len(p) for p in patches]))


@dataclass
class DialogueBatch:
    """Model inputs (without pixels) and assistant-turn labels of a batch of dialogues."""

    inputs: dict[str, torch.Tensor]
    """input_ids, attention_mask, mm_token_type_ids [B, T] (left-padded) and image_grid_thw [B, 3], as the
    processor gives them for these dialogues' images (without `mm_token_type_ids` Qwen2.5-VL silently falls
    back to 1-D rotary positions, so training would not see the positions generation uses)."""
    labels: torch.Tensor
    """int64 [B, T]."""
    scenes: list[int]
    """Pool index of each row."""
    images: list[int]
    """Pool index of each row that holds an image (the rows without a text context), in row order."""


def encode_dialogues(backbone: Backbone, pool: ScenePool | None, dialogues: list[Dialogue]) -> DialogueBatch:
    """Tokenise dialogues (left-padded; the image, or the dialogue's text context, before the first
    question) without touching pixels.

    The processor's only use of the image for the text is the number of image tokens, which the pool's
    grid already holds: the placeholder is expanded to rows × cols image tokens and `image_grid_thw` is
    the grid in patches — the same inputs `Backbone.prepare` gives (tested), at a fraction of its cost.
    A dialogue with a `context` has no image: its text takes the image's place in the prompt (`pool` may
    be None when every dialogue has one)."""
    check_family(backbone)
    merge = backbone.processor.image_processor.merge_size
    image_pad = backbone.family.image_token
    image_block = f"<|vision_start|>{image_pad}<|vision_end|>"
    texts, grids = [], []
    for d in dialogues:
        prompt = backbone.family.chat_prompt(d.turns[0].question).text
        if d.context is not None:
            prompt = prompt.replace(image_block, d.context + "\n", 1)
        else:
            if pool is None:
                raise ValueError(f"dialogue about scene {d.scene} has no text context and no pool was given")
            rows, cols = pool[d.scene].grid
            prompt = prompt.replace(image_pad, image_pad * (rows * cols), 1)
            grids.append([1, rows * merge, cols * merge])
        texts.append(prompt + continuation(backbone, d.turns))
    encoded = backbone.tokenizer(texts, return_tensors="pt", padding=True)
    inputs = {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "mm_token_type_ids": (encoded["input_ids"] == backbone.image_token_id).long(),
    }
    if grids:
        inputs["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
    labels = assistant_labels(backbone, inputs["input_ids"])
    labels[inputs["attention_mask"] == 0] = -100
    images = [d.scene for d in dialogues if d.context is None]
    return DialogueBatch(inputs, labels, [d.scene for d in dialogues], images)


def adopt_language_model(backbone: Backbone, source: Backbone) -> None:
    """Copy `source`'s language model (embeddings, blocks, head) into `backbone`, keeping its vision tower."""
    backbone.model.model.language_model.load_state_dict(source.model.model.language_model.state_dict())
    backbone.model.lm_head.load_state_dict(source.model.lm_head.state_dict())


def model_inputs(inputs: dict[str, torch.Tensor], features: list[torch.Tensor]) -> dict:
    """Text inputs plus precomputed image features in place of pixels (none: a text-only batch)."""
    out = {k: v for k, v in inputs.items() if k != "pixel_values"}
    if features:
        out["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(features))}
    return out


def _forward_inputs(batch: DialogueBatch, cache: FeatureCache | None) -> dict:
    """The model's inputs for `batch`: its text inputs and its image rows' cached features."""
    if batch.images and cache is None:
        raise ValueError("a batch with images needs the pool's FeatureCache")
    return model_inputs(batch.inputs, cache.get(batch.images) if batch.images else [])


def lm_logits(backbone: Backbone, batch: DialogueBatch, cache: FeatureCache | None) -> torch.Tensor:
    """Logits [B, T, V] of the dialogues with cached image features (`cache` may be None for a batch
    without images)."""
    return backbone.model(**_forward_inputs(batch, cache)).logits


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of position t's logits against label t + 1 over labelled positions."""
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )


class LabelLogits(NamedTuple):
    """The LM head's output at the positions that predict a label, and nowhere else."""

    logits: torch.Tensor
    """float [N, V]: one row per labelled position, in row-major (sequence, position) order."""
    targets: torch.Tensor
    """int64 [N]: the label each row predicts (the input id at the next position)."""
    rows: torch.Tensor
    """int64 [N]: the sequence of each row."""
    turns: torch.Tensor
    """int64 [N]: the assistant turn of each row, numbered 0, 1, … over the batch (a turn is a run of
    consecutive labelled positions of one sequence)."""


LOSS_PER: tuple[str, ...] = ("token", "turn")
"""How `answer_loss` averages: over every labelled token, or over each turn's tokens and then the turns."""


def label_logits(backbone: Backbone, batch: DialogueBatch, cache: FeatureCache | None) -> LabelLogits:
    """`lm_logits` at the labelled positions only: the answers are a few tokens of each sequence, and the
    logits [B, T, V] over every position with their softmax are a large part of a tiny model's step
    (bench/bench_answer_loss.py)."""
    hidden = backbone.model.model(**_forward_inputs(batch, cache))[0]  # [B, T, H]
    target = batch.labels[:, 1:]  # [B, T − 1]: label t + 1 is predicted at position t
    labelled = target != -100
    if not bool(labelled.any()):
        raise ValueError("the batch has no labelled position (no assistant answer to learn)")
    logits = backbone.model.lm_head(hidden[:, :-1][labelled])  # [N, V]
    before = F.pad(labelled[:, :-1], (1, 0))  # [B, T − 1]: the position before is labelled
    turns = torch.cumsum((labelled & ~before).flatten().long(), 0).view_as(labelled) - 1
    return LabelLogits(logits.float(), target[labelled], labelled.nonzero()[:, 0], turns[labelled])


def answer_loss(
    backbone: Backbone, batch: DialogueBatch, cache: FeatureCache | None, per: str = "token"
) -> torch.Tensor:
    """The answers' cross-entropy, the head applied only where a label is predicted (`label_logits`).

    `per="token"`: the mean over every labelled token (`next_token_loss(lm_logits(…), batch.labels)`);
    `per="turn"`: each turn's mean, then the mean over turns, so a 60-token reasoning weighs as much as a
    one-word answer rather than 30 times as much."""
    if per not in LOSS_PER:
        raise ValueError(f"per must be one of {LOSS_PER}, got {per!r}")
    out = label_logits(backbone, batch, cache)
    if per == "token":
        return F.cross_entropy(out.logits, out.targets)
    losses = F.cross_entropy(out.logits, out.targets, reduction="none")  # [N]
    count = int(out.turns[-1]) + 1
    sums = losses.new_zeros(count).index_add_(0, out.turns, losses)  # [turns]
    sizes = torch.bincount(out.turns, minlength=count).to(losses.dtype)
    return (sums / sizes).mean()


def train_dialogues(
    backbone: Backbone,
    pool: ScenePool,
    cache: FeatureCache,
    schedule: Schedule,
    make_dialogue: Callable[[int, np.random.Generator], Dialogue],
    seed: int,
    desc: str,
    progress: bool = True,
    grounding: Grounding | None = None,
    trains: str = "language",
    loss_per: str = "token",
) -> LoopRecord:
    """Train on dialogues drawn by `make_dialogue(scene, rng)` either the language model (embeddings,
    blocks, head; `trains="language"`, the vision tower and merger frozen) or the merger alone
    (`trains="merger"`, everything else frozen; `cache` must have `live_merger`). With `grounding`, the
    answers to questions about a named object are also trained to attend to its image tokens
    (`grounding.py`). `loss_per`: `answer_loss`'s average ("token" or "turn")."""
    model = backbone.model
    visual = model.model.visual
    if trains not in ("language", "merger"):
        raise ValueError(f"trains must be 'language' or 'merger', got {trains!r}")
    if loss_per not in LOSS_PER:
        raise ValueError(f"loss_per must be one of {LOSS_PER}, got {loss_per!r}")
    if trains == "merger" and not cache.live_merger:
        raise ValueError("training the merger needs a FeatureCache with live_merger=True")
    trained = [model.model.language_model, model.lm_head] if trains == "language" else [visual.merger]
    train_only(model, trained)

    def step_loss(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        picks = rng.choice(len(pool), size=schedule.batch_size, replace=schedule.batch_size > len(pool))
        dialogues = [make_dialogue(int(i), rng) for i in picks]
        batch = encode_dialogues(backbone, pool, dialogues)
        if grounding is None or grounding.weight == 0:
            loss = answer_loss(backbone, batch, cache, loss_per)
            return loss, {"lm": float(loss.detach())}
        targets = grounding_targets(backbone, pool, dialogues, batch.inputs["input_ids"], batch.labels)
        with capture_attention_inputs(backbone, grounding.layers) as captured:
            lm = answer_loss(backbone, batch, cache, loss_per)
        ground = grounding_loss(backbone, captured, batch.inputs["attention_mask"], targets, grounding.heads)
        return lm + grounding.weight * ground, {"lm": float(lm.detach()), "grounding": float(ground.detach())}

    record = run_loop(trained, schedule, step_loss, seed, desc, progress)
    visual.eval()
    return record


@torch.no_grad()
def score_candidates(
    backbone: Backbone,
    pool: ScenePool,
    cache: FeatureCache | None,
    items: list[tuple[int, Turn]],
    batch_size: int = 64,
    text: bool = False,
) -> np.ndarray:
    """For single-turn questions (scene, turn): index of the candidate with the highest summed
    log-likelihood of "candidate + end-of-turn" (`cache`: the pool's image features, made here when None).
    `text`: the scene in words (`scene_text`) in the image's place (`cache` is then unused)."""
    backbone.model.eval()
    if cache is None and not text:
        cache = FeatureCache(backbone, pool)
    contexts = {scene: scene_text(pool[scene].sample) for scene, _ in items} if text else {}
    expanded = [
        Dialogue(scene, (Turn(t.kind, t.question, c),), contexts.get(scene))
        for scene, t in items
        for c in t.candidates
    ]
    scores = []
    for start in range(0, len(expanded), batch_size):
        batch = encode_dialogues(backbone, pool, expanded[start : start + batch_size])
        out = label_logits(backbone, batch, cache)
        logp = torch.log_softmax(out.logits, -1).gather(-1, out.targets[:, None])[:, 0].double()  # [N]
        scores.append(torch.zeros(len(batch.labels), dtype=torch.float64).index_add_(0, out.rows, logp))
    flat = torch.cat(scores).numpy()
    out, pos = [], 0
    for _, t in items:
        out.append(int(np.argmax(flat[pos : pos + len(t.candidates)])))
        pos += len(t.candidates)
    return np.asarray(out)
