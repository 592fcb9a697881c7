"""Held-out evaluation of a (warmed-up or random-init) backbone on the warm-up tasks.

- Attribute questions: each candidate answer is scored by the model's summed log-likelihood of
  "answer + end-of-turn" (no sampling, deterministic); the prediction is the best candidate. Reported
  beside the chance rate (mean 1 / #candidates) and the majority-class rate of the evaluated questions.
- Output format: greedy generation from the instruction; correct when the response is
  ``<think>…</think>`` followed by exactly K ``<REF_POS>`` and nothing else (`format`), and separately
  when the generated reasoning equals the reference reasoning (`reasoning_exact`).
- Every task also gets its held-out teacher-forced response loss (nats per response token).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from segcompass.backbones import Backbone, build_tiny
from segcompass.world.scene import WorldSample

from .config import WarmupConfig
from .encode import end_of_turn, mean_response_loss, sequence_logprobs
from .tasks import (
    QUESTION_TYPES,
    Example,
    answer_counts,
    describe_example,
    format_example,
    question_example,
)
from .train import build_scenes

logger = logging.getLogger(__name__)

EVAL_SEED = 0xE7A1
"""Seed of the held-out questions: the same for every config, so runs with different seeds compare."""
COLUMNS = ["model", "task", "metric", "n", "accuracy", "chance", "majority", "heldout_loss"]


@dataclass
class EvalSet:
    """Held-out examples (world split "val")."""

    questions: dict[str, list[Example]]
    """Question type → questions (one per scene that admits one)."""
    formats: list[Example]
    """Output-format examples (instruction → think + K tokens)."""
    descriptions: list[Example]
    """Scene-description examples."""


def build_eval_set(config: WarmupConfig, scenes: list[WorldSample] | None = None) -> EvalSet:
    """The held-out examples of `config` (val scenes; questions seeded by `EVAL_SEED`)."""
    scenes = scenes if scenes is not None else build_scenes(config, "val", config.val_scenes)
    rng = np.random.default_rng(EVAL_SEED)
    max_count = config.world_config().max_objects
    questions: dict[str, list[Example]] = {q: [] for q in QUESTION_TYPES}
    for scene in scenes:
        for q in QUESTION_TYPES:
            example = question_example(scene, q, rng, max_count)
            if example is not None:
                questions[q].append(example)
    formats = [
        format_example(s, config.num_slots, config.restate_target) for s in scenes[: config.format_eval]
    ]
    return EvalSet(questions, formats, [describe_example(s) for s in scenes])


def score_questions(backbone: Backbone, questions: list[Example]) -> np.ndarray:
    """Index of the most likely candidate of each question, int [N]."""
    expanded = [
        Example(q.image, q.prompt, c, q.task, q.question_type, q.candidates)
        for q in questions
        for c in q.candidates
    ]
    scores = sequence_logprobs(backbone, expanded).numpy()  # [sum of #candidates]
    out, pos = [], 0
    for q in questions:
        n = len(q.candidates)
        out.append(int(np.argmax(scores[pos : pos + n])))
        pos += n
    return np.asarray(out, dtype=np.int64)


@torch.no_grad()
def generate_responses(
    backbone: Backbone, examples: list[Example], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy responses (special tokens kept, cut at the end-of-turn token)."""
    backbone.model.eval()
    eot = end_of_turn(backbone)
    texts: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        prepared = backbone.prepare([e.image for e in chunk], [e.prompt for e in chunk])
        prompt_len = prepared.inputs["input_ids"].shape[1]
        ids = backbone.model.generate(
            **prepared.inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
        )  # [B, T + new]
        for row in ids[:, prompt_len:]:
            text = backbone.tokenizer.decode(row.tolist(), skip_special_tokens=False)
            texts.append(text.split(eot)[0])
    return texts


def format_ok(text: str, num_slots: int) -> bool:
    """``<think>`` non-empty reasoning ``</think>`` then exactly K ``<REF_POS>``, nothing else."""
    pattern = rf"<think>(?:(?!<think>|</think>|<REF_POS>).)+</think>(?:<REF_POS>){{{num_slots}}}"
    return re.fullmatch(pattern, text.strip(), flags=re.DOTALL) is not None


def _reasoning(text: str) -> str | None:
    m = re.search(r"<think>(.*?)</think>", text, flags=re.DOTALL)
    return m.group(1) if m else None


def evaluate(
    backbone: Backbone, config: WarmupConfig, eval_set: EvalSet | None = None, label: str = "trained"
) -> pd.DataFrame:
    """Held-out accuracy per question type (vs chance and majority), format accuracy and held-out losses."""
    eval_set = eval_set or build_eval_set(config)
    rows = []
    for q, questions in eval_set.questions.items():
        if not questions:
            continue
        pred = score_questions(backbone, questions)
        truth = np.asarray([e.candidates.index(e.response) for e in questions])
        counts = answer_counts(questions)
        rows.append(
            dict(
                model=label, task="qa", metric=q, n=len(questions), accuracy=float((pred == truth).mean()),
                chance=float(np.mean([1 / len(e.candidates) for e in questions])),
                majority=max(counts.values()) / len(questions), heldout_loss=mean_response_loss(backbone, questions),
            )
        )  # fmt: skip
    if eval_set.formats:
        generated = generate_responses(backbone, eval_set.formats, config.max_new_tokens)
        ok = [format_ok(t, config.num_slots) for t in generated]
        exact = [
            _reasoning(t) == _reasoning(e.response) for t, e in zip(generated, eval_set.formats, strict=True)
        ]
        loss = mean_response_loss(backbone, eval_set.formats)
        for metric, values in (("format", ok), ("reasoning_exact", exact)):
            rows.append(
                dict(
                    model=label,
                    task="format",
                    metric=metric,
                    n=len(values),
                    accuracy=float(np.mean(values)),
                    heldout_loss=loss,
                )
            )
        logger.debug("greedy format sample: %r", generated[0][:300])
    if eval_set.descriptions:
        rows.append(
            dict(
                model=label,
                task="describe",
                metric="loss",
                n=len(eval_set.descriptions),
                heldout_loss=mean_response_loss(backbone, eval_set.descriptions),
            )
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def evaluate_with_control(
    backbone: Backbone, config: WarmupConfig, eval_set: EvalSet | None = None
) -> pd.DataFrame:
    """`evaluate` on the trained backbone and on the same preset at random init (docs/design.md §9 control)."""
    eval_set = eval_set or build_eval_set(config)
    control = build_tiny(config.family, seed=config.seed, spec=config.tiny_spec())
    return pd.concat(
        [evaluate(backbone, config, eval_set, "trained"), evaluate(control, config, eval_set, "random_init")],
        ignore_index=True,
    )
