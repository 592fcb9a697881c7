"""Language-model loss with the SAE spliced into the backbone at the hook layer (through nnsight).

For a batch of (image, instruction[, response]) the backbone runs three times under an nnsight trace:
clean; with the output of decoder block L − 1 (= HF `hidden_states[L]`, the states the SAE was trained on)
replaced by the SAE's reconstruction; and with it replaced by zeros. The next-token cross-entropy is averaged
over the positions whose *target* token is of the chosen types (default: every text type, i.e. not image
placeholders). CE loss recovered = (L_zero − L_sae) / (L_zero − L_clean): 1 when splicing costs nothing, 0
when the SAE is as bad as deleting the residual stream.

The nnsight wrapping and the hook-layer walk are `sae.splice.HookLayer`'s. The backbone is duck-typed (`sae`
never imports `segcompass`): `.model` (HF model), `.processor`, `.decoder_layers`, `.hook_layer` and `.prepare(images, instructions, responses)` returning an object with
`.inputs` and `.token_types` ([B, T]) — `segcompass.backbones.Backbone` is one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sae.splice import HookLayer, check_sae_fits
from sae.token_types import TokenType

TEXT_TYPES = (
    TokenType.SPECIAL,
    TokenType.INSTRUCTION,
    TokenType.COT,
    TokenType.CONCENTRATION,
    TokenType.RESPONSE,
)


@dataclass
class CELossResult:
    """Mean next-token cross-entropy (nats) clean, with the SAE spliced in, and with the layer zeroed."""

    clean: float
    spliced: float
    zero_ablation: float
    recovered: float
    """(zero_ablation − spliced) / (zero_ablation − clean)."""
    tokens: int
    """Target tokens scored."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Splicer:
    def __init__(self, backbone: Any) -> None:
        self.hook = HookLayer(backbone)

    @torch.no_grad()
    def logits(self, inputs: Any, replace: Any = None) -> torch.Tensor:
        """Logits of a forward in which `replace(states) -> states` rewrites the hook layer's output."""
        with self.hook.lm.trace(**inputs):
            if replace is not None:
                self.hook.splice(replace)
            logits = self.hook.lm.output.logits.save()
        return logits


def _reconstruct(sae: Any, states: torch.Tensor) -> torch.Tensor:
    flat = states.reshape(-1, states.shape[-1])
    param = next(sae.parameters())
    recon = sae.decode(sae.encode(flat.to(param.device, param.dtype)))
    return recon.to(states.dtype).reshape(states.shape)


def ce_loss_recovered(
    backbone: Any,
    sae: Any,
    images: Sequence[Any],
    instructions: Sequence[str],
    responses: Sequence[str] | None = None,
    *,
    batch_size: int = 8,
    loss_token_types: Sequence[TokenType | str] = TEXT_TYPES,
) -> CELossResult:
    """CE loss clean / spliced / zero-ablated over the documents (see the module docstring)."""
    check_sae_fits(backbone, sae)
    keep = torch.tensor([int(TokenType.parse(t)) for t in loss_token_types])
    splicer = _Splicer(backbone)
    sums = torch.zeros(3, dtype=torch.float64)
    count = 0
    for a in range(0, len(images), batch_size):
        prepared = backbone.prepare(
            list(images[a : a + batch_size]),
            list(instructions[a : a + batch_size]),
            list(responses[a : a + batch_size]) if responses is not None else None,
        )
        inputs = prepared.inputs
        targets = inputs["input_ids"][:, 1:]
        mask = torch.isin(prepared.token_types[:, 1:], keep) & inputs["attention_mask"][:, 1:].bool()
        if not mask.any():
            continue
        variants = [None, lambda h: _reconstruct(sae, h), torch.zeros_like]
        for i, replace in enumerate(variants):
            logits = splicer.logits(inputs, replace)[:, :-1]
            ce = F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum")
            sums[i] += float(ce)
        count += int(mask.sum())
    if count == 0:
        raise ValueError("no target tokens of the requested types to score")
    clean, spliced, zero = (sums / count).tolist()
    recovered = (zero - spliced) / (zero - clean) if zero != clean else math.nan
    return CELossResult(clean, spliced, zero, recovered, count)
