"""Add SegCompass's reasoning tokens to a released checkpoint and give their embedding rows a sane start.

A released tokenizer lacks `<think>`, `</think>` and `<REF_POS>`. Adding them gives new ids; their rows in
the input embedding matrix and in the output (LM head) matrix must not keep whatever they held before:
checkpoints often carry spare rows beyond the tokenizer (Qwen2.5-VL-7B: 152064 rows for 151665 tokens)
that hold untrained values, so the new ids land on those rows without any resize. Every added row — input
and output, whether the matrix grew or not — is set to the mean of the rows of the tokens the tokenizer
already had (spare rows excluded), the usual mean initialisation for new tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 8192
"""Rows averaged per step, so that a 152k × 3584 bf16 matrix is never copied whole into fp32."""


def add_tokens_mean_initialised(model: PreTrainedModel, tokenizer, tokens: Sequence[str]) -> list[str]:
    """Add the `tokens` the tokenizer lacks (as special tokens), grow the embeddings if needed and set the
    added rows of the input and output embeddings to the mean of the existing tokens' rows.

    Returns the tokens that were added (empty when the tokenizer had them all: nothing is changed then).
    """
    missing = [t for t in tokens if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if not missing:
        return []
    existing = sorted(set(tokenizer.get_vocab().values()))
    tokenizer.add_tokens(missing, special_tokens=True)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows are set just below
    new_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in missing]
    mean_initialise_rows(model, new_ids, existing)
    logger.info(
        "added %s to the tokenizer (ids %s; embedding rows %d -> %d); their input and output embedding rows "
        "start at the mean of the %d existing tokens' rows",
        missing, new_ids, rows, model.get_input_embeddings().weight.shape[0], len(existing),
    )  # fmt: skip
    return missing


@torch.no_grad()
def mean_initialise_rows(model: PreTrainedModel, new_ids: Sequence[int], source_ids: Sequence[int]) -> None:
    """Set rows `new_ids` of the input and output embedding matrices to the mean of rows `source_ids`
    (ids beyond a matrix are ignored; a tied matrix is set once)."""
    seen: set[int] = set()
    new = set(int(i) for i in new_ids)
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = getattr(module, "weight", None)
        if weight is None or id(weight) in seen:
            continue
        seen.add(id(weight))
        src = torch.as_tensor([i for i in source_ids if i < weight.shape[0] and i not in new])
        if src.numel() == 0:
            raise ValueError("no existing token rows to average for the new tokens' embeddings")
        total = torch.zeros(weight.shape[1], dtype=torch.float64, device=weight.device)
        for chunk in src.split(_CHUNK_ROWS):
            total += weight.index_select(0, chunk.to(weight.device)).double().sum(0)
        mean = (total / src.numel()).to(weight.dtype)
        weight[torch.as_tensor(list(new_ids), device=weight.device)] = mean
