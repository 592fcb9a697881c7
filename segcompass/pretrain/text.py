"""Stage 0 — text pretraining of the tiny VLM's language model: questions about scenes given in words.

A real MLLM's language model arrives pretrained on text, and with it the ability to read a fact about a
named thing out of its context ("… a red star …" → "What colour is the star?" → "red"). Our tiny one
starts from random weights, and at stage 3's batch size it does not learn that look-up: the answers about
an image do not follow the named object, and the same look-up in plain text stays at chance after 5000
steps of 16 sequences — while 1500 steps of 128 short sequences take it to 0.92 (results/warmup.md). The
skill needs many examples, which text gives cheaply: stage 0 trains the language model on stage 3's
dialogues with each scene's objects written out in words (`scene_text`) where the image would be — many
scenes, large batches, no image tokens. Stage 2 starts from the language model it leaves.

An optional first phase (`RecallPhase`, off by default) trains on short scenes (two or so of a scene's
objects) with look-up questions only, in batches of 128 — the regime in which the probe formed the look-up.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from segcompass.backbones import Backbone
from segcompass.warmup.tasks import DESCRIBE_PROMPT
from segcompass.world.config import WorldConfig
from segcompass.world.generate import generate_sample
from segcompass.world.language import describe_objects
from segcompass.world.scene import WorldSample

from .dialogue import (
    QUESTION_KINDS,
    Dialogue,
    Turn,
    format_turn,
    grounded_format_turn,
    qa_dialogue,
    question_turn,
    scene_text,
)
from .language import answer_loss, encode_dialogues
from .optim import LoopRecord, Schedule, run_loop, train_only

LOOKUP_KINDS: tuple[str, ...] = ("colour", "shape", "size", "position")
"""Question kinds that read an attribute of a named object (the look-up the recall phase is for)."""
RECALL_KINDS: tuple[str, ...] = (*QUESTION_KINDS, "describe", "format", "grounded_format")
"""Turn kinds the recall phase can draw: the questions, "describe" (the short scene's objects said again in
the description's words: a copy of the context, the task that forms induction-style heads), and "format"
(the scene's instruction → its reasoning + the `<REF_POS>` tokens; whole scenes only: a short scene's
objects are not the ones its instruction and reasoning name), and "grounded_format" (the same, with the
reasoning's object phrases grounded on their objects, `dialogue.grounded_format_turn`)."""
FORMAT_KINDS: tuple[str, ...] = ("format", "grounded_format")
"""The kinds that ask the format turn (whole scenes only)."""


@dataclass
class RecallPhase:
    """Stage 0's first phase: short scenes in words (a few objects of a train scene) with questions about
    named objects only, in large batches — the regime in which the tiny language model learns to read a
    named object's attribute out of its context (results/warmup.md, the recall probe)."""

    schedule: Schedule = field(
        default_factory=lambda: Schedule(steps=0, batch_size=128, lr=2e-3, min_lr_fraction=0.05)
    )
    """Optimiser of the phase (0 steps: no recall phase)."""
    objects: tuple[int, int] = (2, 2)
    """Fewest and most objects of a short scene (capped by the scene's own count)."""
    questions: int = 2
    """Question turns per sequence."""
    kinds: tuple[str, ...] = LOOKUP_KINDS
    """Turn kinds each turn is drawn from, uniformly (any of `RECALL_KINDS`)."""
    name_with_size: bool = False
    """Colour, shape and position questions name the object with its size too ("What colour is the medium
    star?"): with the world's one-word names ("the star") the colour look-up did not form in 1500 steps, with
    two-word names it formed in 2 of 2 seeds and carried to one-word questions (results/warmup.md)."""

    def __post_init__(self) -> None:
        if isinstance(self.schedule, dict):
            self.schedule = Schedule(**self.schedule)
        self.objects, self.kinds = tuple(self.objects), tuple(self.kinds)
        if not 1 <= self.objects[0] <= self.objects[1] or self.questions < 1:
            raise ValueError(f"need 1 <= objects[0] <= objects[1] and questions >= 1; got {self}")
        unknown = set(self.kinds) - set(RECALL_KINDS)
        if not self.kinds or unknown:
            raise ValueError(f"kinds must be a non-empty subset of {RECALL_KINDS}; got {self.kinds}")


def _text_sample(args: tuple[WorldConfig, str, int]) -> WorldSample:
    sample = generate_sample(*args)
    return dataclasses.replace(sample, image=None, masks=np.zeros((0, 0, 0), bool))  # words only


def text_samples(world: WorldConfig, split: str, n: int, workers: int = 1) -> list[WorldSample]:
    """Samples 0 … n − 1 of `split` without their images and masks (the scene graph and texts only)."""
    jobs = [(world, split, i) for i in range(n)]
    if workers <= 1:
        return [_text_sample(j) for j in jobs]
    with ProcessPoolExecutor(min(workers, os.cpu_count() or 1)) as pool:
        return list(pool.map(_text_sample, jobs, chunksize=32))


def text_dialogue(
    index: int,
    sample: WorldSample,
    rng: np.random.Generator,
    num_questions: int,
    format_probability: float,
    num_slots: int,
) -> Dialogue:
    """Stage 3's dialogue about `sample` (`qa_dialogue`) with the scene in words in the image's place."""
    dialogue = qa_dialogue(index, sample, rng, num_questions, format_probability, num_slots)
    return dataclasses.replace(dialogue, context=scene_text(sample))


def short_scene(sample: WorldSample, n: int, rng: np.random.Generator) -> WorldSample:
    """`sample` with `n` of its objects (drawn at random, kept in their order; all when it has fewer)."""
    objects = sample.scene.objects
    keep = np.sort(rng.choice(len(objects), size=min(n, len(objects)), replace=False))
    scene = dataclasses.replace(sample.scene, objects=[objects[int(i)] for i in keep])
    return dataclasses.replace(sample, scene=scene)


def describe_again(sample: WorldSample) -> Turn:
    """ "Describe the image." → its objects in the description's words ("A medium blue star at the top and …")."""
    scene = sample.scene
    words = describe_objects(scene.objects, scene.width, scene.height)
    return Turn("describe", DESCRIBE_PROMPT, words[0].upper() + words[1:] + ".")


def recall_turns(
    short: WorldSample, rng: np.random.Generator, phase: RecallPhase, num_slots: int = 4
) -> tuple[Turn, ...]:
    """`phase.questions` distinct turns of `phase.kinds` about the objects of `short` (a count question when
    none of its objects can be named); a "format" turn ends with `num_slots` `<REF_POS>` tokens."""
    turns: list[Turn] = []
    for _ in range(4 * phase.questions):
        if len(turns) == phase.questions:
            break
        kind = phase.kinds[int(rng.integers(len(phase.kinds)))]
        if kind == "describe":
            turn = describe_again(short)
        elif kind == "format":
            turn = format_turn(short, num_slots)
        elif kind == "grounded_format":
            turn = grounded_format_turn(short, num_slots)
        else:
            turn = question_turn(short, kind, rng, with_size=phase.name_with_size)
        if turn is not None and all(t.question != turn.question for t in turns):
            turns.append(turn)
    if not turns:
        turns.append(question_turn(short, "count", rng))
    return tuple(turns)


def recall_dialogue(
    index: int, sample: WorldSample, rng: np.random.Generator, phase: RecallPhase
) -> Dialogue:
    """`recall_turns` about a short scene of `sample`, the scene in words in the image's place."""
    if set(FORMAT_KINDS) & set(phase.kinds):
        raise ValueError(
            "a recall phase on short scenes cannot ask the format turn (it is about whole scenes)"
        )
    short = short_scene(sample, int(rng.integers(phase.objects[0], phase.objects[1] + 1)), rng)
    return Dialogue(index, recall_turns(short, rng, phase), context=scene_text(short))


def train_text(
    backbone: Backbone,
    samples: list[WorldSample],
    schedule: Schedule,
    num_questions: int,
    format_probability: float,
    num_slots: int,
    seed: int,
    progress: bool = True,
    recall: RecallPhase | None = None,
) -> LoopRecord:
    """Train the language model (embeddings, blocks, head) on text dialogues about `samples`: first the
    `recall` phase (short scenes, look-up questions), then stage 3's dialogues with the scene in words."""
    model = backbone.model
    language = [model.model.language_model, model.lm_head]
    train_only(model, language)

    def loss_of(dialogues: list[Dialogue]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = encode_dialogues(backbone, None, dialogues)
        loss = answer_loss(backbone, batch, None)
        return loss, {"lm": float(loss.detach())}

    def picks(rng: np.random.Generator, n: int) -> list[int]:
        return [int(i) for i in rng.choice(len(samples), size=n, replace=n > len(samples))]

    def recall_loss(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return loss_of(
            [recall_dialogue(i, samples[i], rng, recall) for i in picks(rng, recall.schedule.batch_size)]
        )

    def dialogue_loss(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return loss_of(
            [
                text_dialogue(i, samples[i], rng, num_questions, format_probability, num_slots)
                for i in picks(rng, schedule.batch_size)
            ]
        )

    record = LoopRecord()
    if recall is not None and recall.schedule.steps > 0:
        record = run_loop(language, recall.schedule, recall_loss, seed + 1, "stage 0: recall", progress)
    dialogues = run_loop(language, schedule, dialogue_loss, seed, "stage 0: text", progress)
    return LoopRecord(
        record.losses + dialogues.losses, record.parts + dialogues.parts, record.wall_s + dialogues.wall_s
    )
