"""Every held-out figure of one model of the stack as one table (`evaluate.COLUMNS`): the questions, the
answer following the named object, the questions with the scene in words, the reasoning, the greedy count,
and linear probes of the hook-layer image tokens. `segcompass pretrain` writes it for the built model and
for the random-init control (`evaluation.csv`)."""

from __future__ import annotations

import pandas as pd

from segcompass.backbones import Backbone

from .evaluate import COLUMNS, named_object_sensitivity, question_accuracy, reasoning_accuracy, table_row
from .evaluate_count import greedy_count_accuracy
from .language import FeatureCache
from .pool import ScenePool
from .probe import hook_layer_tokens, token_probes


def probe_rows(backbone: Backbone, train: ScenePool, val: ScenePool, label: str) -> list[dict]:
    """Linear probes of hook-layer image tokens (fitted on `train`, scored on `val`)."""
    results = token_probes(hook_layer_tokens(backbone, train), train, hook_layer_tokens(backbone, val), val)
    return [table_row(label, f"hook_probe_{k}", r.n_test, r.accuracy, r.majority) for k, r in results.items()]


def evaluate_stack(
    backbone: Backbone, train: ScenePool, val: ScenePool, label: str, num_slots: int
) -> pd.DataFrame:
    """Every held-out figure of one model as a table (`COLUMNS`)."""
    cache = FeatureCache(backbone, val)  # the val images through the tower once, for both question sets
    rows = question_accuracy(backbone, val, label, cache)
    rows += named_object_sensitivity(backbone, val, label, cache)
    rows += question_accuracy(backbone, val, label, text=True)  # the same questions, the scene in words
    rows += reasoning_accuracy(backbone, val, label, num_slots)
    rows += greedy_count_accuracy(backbone, val, label)
    rows += probe_rows(backbone, train, val, label)
    return pd.DataFrame(rows, columns=COLUMNS)
