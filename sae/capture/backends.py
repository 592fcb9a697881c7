"""Read hook-layer states out of a backbone: nnsight (default) or transformer-lens.

Both return the same thing — the residual stream after decoder block L − 1, i.e. HF `hidden_states[L]` —
so a store does not depend on which backend wrote it. nnsight stops the forward right after the hook
layer when nothing later is needed; transformer-lens keeps its users' hook names
(`blocks.{L-1}.hook_resid_post`).
"""

from __future__ import annotations

import logging
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from sae.backbone_protocol import CaptureBackbone, PreparedInputs
from sae.splice import HookLayer

logger = logging.getLogger(__name__)


@dataclass
class GeneratedStates:
    """States of a prompt and its generated continuation (B samples, T prompt positions, N new tokens)."""

    states: torch.Tensor
    """[B, T + N, D] hook-layer states of the prompt and of every kept generated token."""
    sequences: torch.Tensor
    """[B, T + N] token ids: the prompt followed by the generated tokens."""


class CaptureBackend(ABC):
    """Runs a backbone and returns its hook-layer states."""

    name: str

    def __init__(self, backbone: CaptureBackbone, early_stop: bool = True) -> None:
        self.backbone = backbone
        self.early_stop = early_stop

    @abstractmethod
    def prompt_states(self, prepared: PreparedInputs) -> torch.Tensor:
        """[B, T, D] hook-layer states of a prepared batch (one forward)."""

    def generate(self, prepared: PreparedInputs, max_new_tokens: int) -> GeneratedStates:
        raise NotImplementedError(f"the {self.name} backend does not capture during generation; use nnsight")


class NnsightBackend(CaptureBackend):
    """nnsight's `TransformersModel` around the already-built HF model (no reload, no copy)."""

    name = "nnsight"

    def __init__(self, backbone: CaptureBackbone, early_stop: bool = True) -> None:
        super().__init__(backbone, early_stop)
        self.hook = HookLayer(backbone)
        self.lm = self.hook.lm

    @torch.no_grad()
    def prompt_states(self, prepared: PreparedInputs) -> torch.Tensor:
        with self.lm.trace(**prepared.inputs) as tracer:
            states = self.hook.output().save()
            if self.early_stop:
                tracer.stop()
        return states

    @torch.no_grad()
    def generate(self, prepared: PreparedInputs, max_new_tokens: int) -> GeneratedStates:
        # One generation pass: step 0 yields the prompt's states, each later step one new token's. The last
        # sampled token is never fed back, so we generate one extra token and drop it.
        steps = max_new_tokens + 1
        with self.lm.generate(**prepared.inputs, max_new_tokens=steps, do_sample=False) as tracer:
            collected = list().save()
            for _ in tracer.iter[:steps]:
                collected.append(self.hook.output())
            ids = tracer.result.save()
        states = torch.cat(collected, dim=1)  # [B, T + n_steps - 1, D]
        keep = min(states.shape[1], ids.shape[1] - 1)
        return GeneratedStates(states[:, :keep], ids[:, :keep])


class TransformerLensBackend(CaptureBackend):
    """transformer-lens `TransformerBridge` around the HF model; reads `blocks.{L-1}.hook_resid_post`."""

    name = "transformer_lens"

    def __init__(self, backbone: CaptureBackbone, early_stop: bool = True) -> None:
        super().__init__(backbone, early_stop)
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer

        # The bridge needs a checkpoint folder and a tokenizer loaded from one (an in-memory tokenizer lacks
        # its name_or_path and makes it look on the hub).
        if not backbone.model.config.architectures:  # set by save_pretrained; the bridge dispatches on it
            backbone.model.config.architectures = [type(backbone.model).__name__]
        folder = Path(backbone.name_or_path)
        if not (folder / "config.json").exists():
            self._tmp = tempfile.TemporaryDirectory(prefix="segcompass-tl-")
            folder = Path(self._tmp.name)
            backbone.model.config.save_pretrained(folder)
            backbone.processor.save_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.padding_side = backbone.processor.tokenizer.padding_side  # the Backbone's: left
        self.bridge = TransformerBridge.boot_transformers(
            str(folder), hf_model=backbone.model, tokenizer=tokenizer
        )
        self.hook_name = f"blocks.{backbone.hook_layer - 1}.hook_resid_post"

    @torch.no_grad()
    def prompt_states(self, prepared: PreparedInputs) -> torch.Tensor:
        inputs = dict(prepared.inputs)
        input_ids = inputs.pop("input_ids")
        _, cache = self.bridge.run_with_cache(
            input_ids, names_filter=lambda name: name == self.hook_name, **inputs
        )
        return cache[self.hook_name]


BACKENDS = {"nnsight": NnsightBackend, "transformer_lens": TransformerLensBackend}


def make_backend(name: str, backbone: CaptureBackbone, early_stop: bool = True) -> CaptureBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown capture backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](backbone, early_stop)
