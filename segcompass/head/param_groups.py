"""What trains and at which learning rate (docs/design.md §4).

lr multipliers over the LLM's base lr: ×30 codebook, ×25 heads (aggregator, fusion, slot mapper incl. the
confidence MLP), ×10 SAM prompt encoder, ×5 SAM mask decoder, ×1 the LLM blocks after the hook layer
(+ final norm / lm_head). The SAE, the SAM image encoder and the LLM up to the hook are frozen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .codebook import densify_sparse_grad
from .model import SegCompassHead

logger = logging.getLogger(__name__)

LR_MULTIPLIERS: dict[str, float] = {
    "codebook": 30.0,
    "heads": 25.0,
    "sam_prompt_encoder": 10.0,
    "sam_mask_decoder": 5.0,
    "llm": 1.0,
}


def _final_modules(model: nn.Module, decoder_layers: nn.ModuleList) -> list[nn.Module]:
    """Final norm of the decoder stack and the output head (when not tied to the input embeddings)."""
    mods: list[nn.Module] = []
    for m in model.modules():
        if getattr(m, "layers", None) is decoder_layers and isinstance(getattr(m, "norm", None), nn.Module):
            mods.append(m.norm)
            break
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if isinstance(out, nn.Module):
        get_in = getattr(model, "get_input_embeddings", None)
        inp = get_in() if callable(get_in) else None
        if inp is not None and getattr(inp, "weight", None) is getattr(out, "weight", 0):
            logger.warning(
                "lm_head is tied to the input embeddings: left frozen (training it would move the hook)"
            )
        else:
            mods.append(out)
    return mods


def freeze_backbone_up_to_hook(
    model: nn.Module, decoder_layers: nn.ModuleList, hook_layer: int
) -> list[nn.Parameter]:
    """Freeze the backbone except the decoder blocks after the hook layer (+ final norm / lm_head).

    hook_layer is the HF `hidden_states` index L (0 = embeddings, i = output of block i−1), so blocks with
    index ≥ L come after the hook and train; everything that produces hidden_states[L] is frozen.

    Returns:
        the parameters left trainable (the "llm" group).
    """
    if not 0 <= hook_layer <= len(decoder_layers):
        raise ValueError(f"hook_layer {hook_layer} outside [0, {len(decoder_layers)}] for this backbone")
    model.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    seen: set[int] = set()
    for mod in [*list(decoder_layers)[hook_layer:], *_final_modules(model, decoder_layers)]:
        for p in mod.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                p.requires_grad_(True)
                trainable.append(p)
    return trainable


def head_param_groups(
    head: SegCompassHead,
    base_lr: float,
    llm_params: Iterable[nn.Parameter] = (),
    weight_decay: float = 0.01,
    multipliers: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups (each with a 'name'); frozen parts are excluded and kept frozen."""
    mult = {**LR_MULTIPLIERS, **(multipliers or {})}
    head.concepts.requires_grad_(False)
    if head.image_encoder is not None:
        head.image_encoder.requires_grad_(False)
    parts: dict[str, list[nn.Parameter]] = {
        "codebook": list(head.codebook.parameters()),
        "heads": [*head.aggregator.parameters(), *head.fusion.parameters(), *head.slot_mapper.parameters()],
        "sam_prompt_encoder": list(head.mask_head.prompt_encoder.parameters()),
        "sam_mask_decoder": list(head.mask_head.mask_decoder.parameters()),
        "llm": [p for p in llm_params if p.requires_grad],
    }
    groups = []
    for name, params in parts.items():
        if params:
            groups.append(
                {"name": name, "params": params, "lr": base_lr * mult[name], "weight_decay": weight_decay}
            )
    return groups


def build_optimizer(
    groups: list[dict[str, Any]], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW over `groups`; sparse codebook gradients are densified just before each step (exact AdamW)."""
    opt = torch.optim.AdamW(groups, betas=betas, eps=eps)

    def _densify(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for g in optimizer.param_groups:
            for p in g["params"]:
                densify_sparse_grad(p)

    opt.register_step_pre_hook(_densify)
    return opt
