"""The count, answered greedily: what a model that lists before it counts (`StackConfig.count_listing`) can be
scored on, and a model that answers with the number alone too, so the two compare.

The held-out count questions are those of `evaluate.question_items` (one per val scene, the same as the
likelihood-scored `count`); the answer is the last number of the greedy response ("Circles: … So 2." → 2,
"2" → 2). Reported over all of them and over those with three objects or more, where the direct count fails
(results/warmup.md, session (13)).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from segcompass.backbones import Backbone
from segcompass.warmup.evaluate import generate_responses
from segcompass.warmup.tasks import Example

from .evaluate import GENERATE_BATCH, question_items, table_row
from .pool import ScenePool

_LAST_NUMBER = re.compile(r"(\d+)\D*$")


def answered_count(text: str) -> str | None:
    """The last number of a response ("Circles: the … and the …. So 2." → "2"); None when it has none."""
    match = _LAST_NUMBER.search(text)
    return match.group(1) if match else None


def greedy_count_accuracy(
    backbone: Backbone, pool: ScenePool, label: str, max_new_tokens: int = 160
) -> list[dict]:
    """Rows `count_greedy` (every count question) and `count_greedy_3_or_more` (true count ≥ 3), each beside
    its majority rate."""
    items = [(i, t) for i, t in question_items(pool) if t.kind == "count"]
    examples = [Example(pool[i].sample.image, t.question, "", "qa") for i, t in items]
    texts = generate_responses(backbone, examples, max_new_tokens, GENERATE_BATCH)
    truth = [t.answer for _, t in items]
    hits = np.asarray([answered_count(text) == answer for text, answer in zip(texts, truth, strict=True)])
    many = np.asarray([int(answer) >= 3 for answer in truth], dtype=bool)
    rows = []
    for measure, keep in (("count_greedy", np.ones_like(many)), ("count_greedy_3_or_more", many)):
        kept = [a for a, k in zip(truth, keep, strict=True) if k]
        majority = max(Counter(kept).values()) / len(kept) if kept else float("nan")
        accuracy = float(hits[keep].mean()) if kept else float("nan")
        rows.append(table_row(label, measure, len(kept), accuracy, majority))
    return rows
