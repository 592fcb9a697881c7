"""Stage 0 — text pretraining of the tiny VLM's language model: questions about scenes given in words.

A real MLLM's language model arrives pretrained on text, and with it the ability to read a fact about a
named thing out of its context ("… a red star …" → "What colour is the star?" → "red"). Our tiny one
starts from random weights, and at stage 3's batch size it does not learn that look-up: the answers about
an image do not follow the named object, and the same look-up in plain text stays at chance after 5000
steps of 16 sequences — while 1500 steps of 128 short sequences take it to 0.92 (results/warmup.md). The
skill needs many examples, which text gives cheaply: stage 0 trains the language model on stage 3's
dialogues with each scene's objects written out in words (`scene_text`) where the image would be — many
scenes, large batches, no image tokens. Stage 2 starts from the language model it leaves.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from segcompass.backbones import Backbone
from segcompass.world.config import WorldConfig
from segcompass.world.generate import generate_sample
from segcompass.world.scene import WorldSample

from .dialogue import Dialogue, qa_dialogue, scene_text
from .language import encode_dialogues, lm_logits, next_token_loss
from .optim import LoopRecord, Schedule, run_loop, train_only


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


def train_text(
    backbone: Backbone,
    samples: list[WorldSample],
    schedule: Schedule,
    num_questions: int,
    format_probability: float,
    num_slots: int,
    seed: int,
    progress: bool = True,
) -> LoopRecord:
    """Train the language model (embeddings, blocks, head) on text dialogues about `samples`."""
    model = backbone.model
    language = [model.model.language_model, model.lm_head]
    train_only(model, language)

    def step_loss(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        picks = rng.choice(len(samples), size=schedule.batch_size, replace=schedule.batch_size > len(samples))
        dialogues = [
            text_dialogue(int(i), samples[i], rng, num_questions, format_probability, num_slots)
            for i in picks
        ]
        batch = encode_dialogues(backbone, None, dialogues)
        loss = next_token_loss(lm_logits(backbone, batch, None), batch.labels)
        return loss, {"lm": float(loss.detach())}

    return run_loop(language, schedule, step_loss, seed, "stage 0: text", progress)
