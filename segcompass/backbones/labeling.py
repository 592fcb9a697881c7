"""Label every token position of a processed batch with its `TokenType` and image-grid coordinates.

The processor expands each image placeholder into n copies of the image token and tokenises the whole
text. We read its offset mapping and map each token back to the character spans of the chat prompt
(`PromptText`), correcting for the expansion; image tokens are recognised by id and numbered in raster
order, so token k of an image sits at (k // cols, k % cols) of its grid.
"""

from __future__ import annotations

import bisect
import re

import torch

from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType

from .family import PromptText
from .tokenizer import REASONING_TOKENS

_THINK = re.compile(r"<think>(.*?)(</think>|$)", re.DOTALL)


def label_positions(
    encoded: dict[str, torch.Tensor],
    prompts: list[PromptText],
    responses: list[str] | None,
    geometries: list[ImageGeometry],
    image_token_id: int,
    tokenizer,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (token_types [B, T], image_rc [B, T, 2], response_start [B]) for a processor output."""
    input_ids = encoded["input_ids"]
    attention = encoded["attention_mask"].bool()
    offsets = encoded["offset_mapping"]
    batch, length = input_ids.shape
    think_open, think_close, ref_pos = (tokenizer.convert_tokens_to_ids(t) for t in REASONING_TOKENS)
    special_ids = set(tokenizer.all_special_ids)

    token_types = torch.full((batch, length), int(TokenType.PAD), dtype=torch.long)
    image_rc = torch.full((batch, length, 2), -1, dtype=torch.long)
    response_start = torch.full((batch,), length, dtype=torch.long)

    for b in range(batch):
        prompt = prompts[b]
        response = responses[b] if responses else ""
        ids = input_ids[b]
        is_image = (ids == image_token_id) & attention[b]
        n_image = int(is_image.sum())
        geometry = geometries[b]
        if n_image != geometry.num_tokens:
            raise RuntimeError(
                f"sample {b}: {n_image} image tokens in the sequence but the image geometry has "
                f"{geometry.grid[0]}x{geometry.grid[1]} = {geometry.num_tokens}"
            )
        # Characters of the expanded text past the image region are shifted by the expansion.
        img_start, img_end = next((s, e) for s, e, k in prompt.spans if k == TokenType.IMAGE)
        expansion = (n_image - 1) * (img_end - img_start)
        starts = [s for s, _, _ in prompt.spans]
        cot_spans = [(m.start(1), m.end(1)) for m in _THINK.finditer(response)]
        k_image = 0
        for t in range(length):
            if not attention[b, t]:
                continue
            tok = int(ids[t])
            if tok == image_token_id:
                cols = geometry.grid[1]
                image_rc[b, t, 0], image_rc[b, t, 1] = k_image // cols, k_image % cols
                token_types[b, t] = TokenType.IMAGE
                k_image += 1
                continue
            s, e = (int(v) for v in offsets[b, t])
            if s == e:  # a token the tokenizer added (BOS): no characters of its own
                token_types[b, t] = TokenType.SPECIAL
                continue
            char = s if s < img_start else s - expansion
            if char >= len(prompt.text):
                response_start[b] = min(int(response_start[b]), t)
                token_types[b, t] = _response_type(
                    tok, char - len(prompt.text), cot_spans, special_ids, think_open, think_close, ref_pos
                )
            elif tok in special_ids:
                token_types[b, t] = TokenType.SPECIAL
            else:
                span = prompt.spans[bisect.bisect_right(starts, char) - 1]
                token_types[b, t] = span[2]
    return token_types, image_rc, response_start


def _response_type(
    tok: int,
    char: int,
    cot_spans: list[tuple[int, int]],
    special_ids: set[int],
    think_open: int,
    think_close: int,
    ref_pos: int,
) -> TokenType:
    if tok == ref_pos:
        return TokenType.CONCENTRATION
    if tok in (think_open, think_close) or tok in special_ids:
        return TokenType.SPECIAL
    if any(s <= char < e for s, e in cot_spans):
        return TokenType.COT
    return TokenType.RESPONSE
