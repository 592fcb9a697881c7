"""Rollouts: G sampled (or one greedy) responses per prompt, with everything the one policy forward needs.

One batched, KV-cached ``generate`` call produces all B·G responses (the G copies of a prompt are
contiguous). The result keeps the prompt ids, the response ids up to and including the end-of-turn
token, the image inputs and the `TokenType` of every position, so that `policy_forward` can run the
single forward over prompt + response that yields log-probs, hook-layer states and concentration states.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from sae.capture.runner import label_generated
from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType
from segcompass.backbones import Backbone

from .config import PolicyConfig

logger = logging.getLogger(__name__)

_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
"""Model inputs with one entry per sequence position (extended over the response for the forward)."""


@dataclass
class Rollouts:
    """N = B·G responses (the G responses of prompt b at rows b·G … b·G + G − 1); P prompt, R response
    positions."""

    prompt_inputs: dict[str, Tensor]
    """Model inputs of the N (left-padded) prompts: input_ids [N, P], attention_mask [N, P], image tensors."""
    response_ids: Tensor
    """int64 [N, R] generated ids, padded with the pad id after the end-of-turn token."""
    response_mask: Tensor
    """bool [N, R] valid response tokens (up to and including the first end-of-turn token)."""
    token_types: Tensor
    """int64 [N, P + R] `TokenType` of every position (PAD where masked)."""
    image_rc: Tensor
    """int64 [N, P + R, 2] image-grid (row, col) of image tokens, −1 elsewhere."""
    geometries: list[ImageGeometry]
    """How each row's image tokens map to pixels."""
    texts: list[str]
    """Decoded responses (special tokens kept, cut before the end-of-turn token)."""
    group_size: int
    """G: responses per prompt."""
    greedy: bool
    """True for deterministic greedy decoding (evaluation), False for sampled rollouts."""

    @property
    def num_prompts(self) -> int:
        return self.response_ids.shape[0] // self.group_size

    @property
    def prompt_length(self) -> int:
        return int(self.prompt_inputs["input_ids"].shape[1])

    def full_inputs(self) -> dict[str, Tensor]:
        """Model inputs over prompt + response: sequence tensors extended, image tensors unchanged."""
        out = dict(self.prompt_inputs)
        n, r = self.response_ids.shape
        out["input_ids"] = torch.cat([self.prompt_inputs["input_ids"], self.response_ids], dim=1)
        out["attention_mask"] = torch.cat(
            [
                self.prompt_inputs["attention_mask"],
                self.response_mask.to(self.prompt_inputs["attention_mask"]),
            ],
            dim=1,
        )
        for key in _SEQUENCE_KEYS[2:]:
            if key in out:
                out[key] = torch.cat([out[key], out[key].new_zeros(n, r)], dim=1)
        return out

    def cot_lengths(self) -> Tensor:
        """int64 [N] number of CoT tokens of each response (to watch for reasoning-skipping)."""
        return (self.token_types[:, self.prompt_length :] == TokenType.COT).sum(dim=1)


def eos_ids(backbone: Backbone) -> set[int]:
    """Token ids that end a response (the tokenizer's EOS/pad and the generation config's EOS)."""
    tok = backbone.tokenizer
    gen = getattr(backbone.model.generation_config, "eos_token_id", None)
    ids = [tok.eos_token_id, *(gen if isinstance(gen, list) else [gen])]
    return {int(i) for i in ids if isinstance(i, int)}


_MULTIMODAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<image>")


def multimodal_token_ids(backbone: Backbone) -> list[int]:
    """Ids of image/video placeholder tokens: a response must never contain them (the forward over prompt +
    response would then count more image tokens than image features)."""
    tok = backbone.tokenizer
    vocab = tok.get_vocab()
    names = {backbone.family.image_token, *_MULTIMODAL_TOKENS}
    return sorted(int(vocab[n]) for n in names if n in vocab)


def response_mask_of(response_ids: Tensor, eos: set[int]) -> Tensor:
    """bool [N, R]: positions up to and including the first end-of-turn token of each row."""
    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for i in eos:
        is_eos |= response_ids == i
    after = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS tokens strictly before t
    return after == 0


@torch.no_grad()
def generate_rollouts(
    backbone: Backbone,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    config: PolicyConfig,
    *,
    group_size: int = 1,
    greedy: bool = False,
    synced_gpus: bool = False,
) -> Rollouts:
    """Sample `group_size` responses per (image, text) — or decode one greedily — in one generate call.

    Sampling uses torch's global generator: seed it (``torch.manual_seed``) for reproducible rollouts.
    `synced_gpus`: keep stepping until every process has finished (needed when the model is FSDP-sharded).
    """
    if len(images) != len(texts) or not texts:
        raise ValueError(f"need as many images as texts (> 0), got {len(images)} and {len(texts)}")
    if greedy and group_size != 1:
        raise ValueError("greedy decoding gives one response per prompt: use group_size=1")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    rep_images = [im for im in images for _ in range(group_size)]
    rep_texts = [config.prompt_template.format(text=t) for t in texts for _ in range(group_size)]
    prepared = backbone.prepare(rep_images, rep_texts, image_first=config.image_first, system=config.system)
    device = backbone.device
    # every Rollouts tensor lives on the model's device
    inputs = {k: v.to(device) for k, v in prepared.inputs.items()}
    model = backbone.model
    was_training = model.training
    model.eval()
    pad = backbone.tokenizer.pad_token_id
    sampling = {} if greedy else {"temperature": config.temperature, "top_p": config.top_p}
    try:
        ids = model.generate(
            **inputs,
            max_new_tokens=config.max_new_tokens,
            do_sample=not greedy,
            num_beams=1,
            pad_token_id=pad,
            suppress_tokens=multimodal_token_ids(backbone),
            synced_gpus=synced_gpus,
            **sampling,
        )  # [N, P + R]
    finally:
        model.train(was_training)
    p = inputs["input_ids"].shape[1]
    response_ids = ids[:, p:]  # [N, R]
    eos = eos_ids(backbone)
    response_mask = response_mask_of(response_ids, eos)
    response_ids = torch.where(response_mask, response_ids, torch.full_like(response_ids, pad))
    response_types = label_generated(response_ids, backbone).to(device)  # [N, R], PAD from the first EOS on
    # The end-of-turn token itself is scored (the policy chooses to stop): label it SPECIAL.
    response_types = torch.where(
        response_mask & (response_types == TokenType.PAD), int(TokenType.SPECIAL), response_types
    )
    token_types = torch.cat([prepared.token_types.to(device), response_types], dim=1)
    prompt_rc = prepared.image_rc.to(device)
    image_rc = torch.cat([prompt_rc, prompt_rc.new_full((*response_ids.shape, 2), -1)], dim=1)
    decoded = backbone.tokenizer.batch_decode(
        [row[m].tolist() for row, m in zip(response_ids, response_mask, strict=True)],
        skip_special_tokens=False,
    )
    eos_text = backbone.tokenizer.eos_token or ""
    cleaned = [t.split(eos_text)[0] if eos_text else t for t in decoded]
    logger.debug("rollouts: %d × %d, response length ≤ %d", len(texts), group_size, response_ids.shape[1])
    return Rollouts(
        prompt_inputs=inputs,
        response_ids=response_ids,
        response_mask=response_mask,
        token_types=token_types,
        image_rc=image_rc,
        geometries=prepared.geometries,
        texts=cleaned,
        group_size=group_size,
        greedy=greedy,
    )


@torch.no_grad()
def rollouts_from_responses(
    backbone: Backbone,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    responses: Sequence[str],
    config: PolicyConfig,
) -> Rollouts:
    """Teacher-forced `Rollouts` for given response texts (each followed by the end-of-turn token): score
    or read the states of known responses with the same forward as sampled ones (G = 1)."""
    if not (len(images) == len(texts) == len(responses)) or not texts:
        raise ValueError(f"need equal, non-zero numbers of images, texts and responses, got "
                         f"{len(images)}, {len(texts)}, {len(responses)}")  # fmt: skip
    prompts = [config.prompt_template.format(text=t) for t in texts]
    prepared = backbone.prepare(list(images), prompts, image_first=config.image_first, system=config.system)
    tok = backbone.tokenizer
    eos = tok.eos_token_id
    rows = [tok(r, add_special_tokens=False)["input_ids"] + [eos] for r in responses]
    banned = set(multimodal_token_ids(backbone))
    for i, row in enumerate(rows):
        if banned & set(row):
            raise ValueError(f"response {i} contains an image/video placeholder token: {responses[i][:80]!r}")
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    dev = backbone.device
    response_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)  # [N, R]
    response_mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    response_types = label_generated(response_ids, backbone)
    response_types = torch.where(
        response_mask & (response_types == TokenType.PAD), int(TokenType.SPECIAL), response_types
    )
    prompt_rc = prepared.image_rc.to(dev)
    return Rollouts(
        prompt_inputs={k: v.to(dev) for k, v in prepared.inputs.items()},
        response_ids=response_ids.to(dev),
        response_mask=response_mask.to(dev),
        token_types=torch.cat([prepared.token_types.to(dev), response_types.to(dev)], dim=1),
        image_rc=torch.cat([prompt_rc, prompt_rc.new_full((*response_ids.shape, 2), -1)], dim=1),
        geometries=prepared.geometries,
        texts=list(responses),
        group_size=1,
        greedy=True,
    )
