"""LoRA on the policy's post-hook blocks through peft (`JointTrainConfig.lora`).

Only the decoder blocks after the hook layer get adapters (the blocks that produce `hidden_states[L]` stay
exactly as the SAE saw them); the base weights freeze, the adapters train in the "llm" parameter group.
The KL reference is then the same network with its adapters switched off — no second copy of a 7B model.
A saved model holds the merged weights (W + BA), so it loads as a plain checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn


def _default_targets() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """LoRA adapters on the linear layers of the post-hook decoder blocks."""

    lora_rank: int = 0
    """r: the adapters' inner width; 0 turns LoRA off (the post-hook blocks train their full weights)."""
    lora_alpha: float = 32.0
    """Scaling numerator: the update is (lora_alpha / lora_rank) · B A x."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input."""
    lora_targets: list[str] = field(default_factory=_default_targets)
    """Names (last path component) of the linear layers in each post-hook block that get adapters."""

    def __post_init__(self) -> None:
        if (
            self.lora_rank < 0
            or self.lora_alpha <= 0
            or not 0 <= self.lora_dropout < 1
            or not self.lora_targets
        ):
            raise ValueError(
                f"need lora_rank >= 0, lora_alpha > 0, 0 <= lora_dropout < 1 and some lora_targets, got {self}"
            )


def lora_target_names(
    model: nn.Module, decoder_layers: nn.ModuleList, hook_layer: int, targets: list[str]
) -> list[str]:
    """Full module names (in `model`) of the `targets` linears in blocks hook_layer … n − 1."""
    names = {id(m): n for n, m in model.named_modules()}
    found = []
    for block in list(decoder_layers)[hook_layer:]:
        for sub, mod in block.named_modules():
            if isinstance(mod, nn.Linear) and sub.split(".")[-1] in targets:
                found.append(names[id(mod)])
    if not found:
        raise ValueError(
            f"no linear layer named {targets} in the decoder blocks after hook layer {hook_layer}"
        )
    return found


def apply_lora(
    model: nn.Module, decoder_layers: nn.ModuleList, hook_layer: int, settings: LoraSettings
) -> list[nn.Parameter]:
    """Freeze `model`, inject adapters into the post-hook blocks (in place, once) and return the adapters'
    parameters. B starts at zero, so the policy equals the base model until the first update."""
    if settings.lora_rank < 1:
        raise ValueError("LoRA rank is 0 (off); set LoraSettings.lora_rank >= 1")
    model.requires_grad_(False)
    if has_lora(model):  # a second run on the same model object: keep its adapters
        return [p.requires_grad_(True) for n, p in model.named_parameters() if ".lora_" in n]
    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=lora_target_names(model, decoder_layers, hook_layer, settings.lora_targets),
    )
    inject_adapter_in_model(config, model)
    params = []
    for name, p in model.named_parameters():
        is_adapter = ".lora_" in name
        p.requires_grad_(is_adapter)
        if is_adapter:
            params.append(p)
    return params


def has_lora(model: nn.Module) -> bool:
    """True when `model` holds peft adapter layers."""
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` as its base network (adapters off) inside the block."""
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


class AdapterFreeReference(nn.Module):
    """The KL reference of a LoRA policy: the policy network called with its adapters switched off."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self._policy = [policy]  # not a submodule: no parameters of its own, nothing to save or move

    def forward(self, *args, **kwargs):
        policy = self._policy[0]
        with torch.no_grad(), adapters_disabled(policy):
            return policy(*args, **kwargs)

    def train(self, mode: bool = True) -> AdapterFreeReference:  # the policy's mode is the caller's
        return self


def lora_scaling(model: nn.Module) -> float:
    """alpha / r of the adapters in `model` (one setting for all of them, as `apply_lora` makes them)."""
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    return float(layer.scaling["default"])


def merge_lora_state(state: dict[str, Tensor], scaling: float, adapter: str = "default") -> dict[str, Tensor]:
    """A state dict with adapter layers → the plain network's: `X.base_layer.W` + scaling · `X.lora_B` @
    `X.lora_A` under `X.weight`, other base-layer tensors renamed, adapter tensors dropped. Works on full
    (gathered) state dicts, so it serves sharded runs too."""
    merged: dict[str, Tensor] = {}
    for name, value in state.items():
        if ".lora_" in name:
            continue
        if ".base_layer." not in name:
            merged[name] = value
            continue
        owner, leaf = name.split(".base_layer.", 1)
        if leaf == "weight":
            a, b = state[f"{owner}.lora_A.{adapter}.weight"], state[f"{owner}.lora_B.{adapter}.weight"]
            value = value + (scaling * (b.float() @ a.float())).to(value.dtype)
        merged[f"{owner}.{leaf}"] = value
    return merged
