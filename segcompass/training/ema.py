"""An exponential moving average of the head's trainable weights during joint training.

    ema = HeadEMA(model, decay=0.95)   # after setup (and sharding): it copies the parameters as they are
    ...optimizer.step(); ema.update()  # every step
    ema.copy_to(model)                 # at the end: the model holds the average

The average starts from the weights the run starts from (a warm-started head keeps weight decay^t on its
start after t steps) and has no bias correction: with a warm start that is the point — the run's head
updates, made at a constant learning rate on sampled responses, are averaged instead of taken as they
fall. Under FSDP the averages are DTensors laid out like their parameters; `state_dict` gathers them
(collective) and `load_state_dict` scatters them back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .sharding import laid_out_like, whole_on_cpu


class HeadEMA:
    """EMA of every trainable parameter of `model.head`, by the model-level name (``head.…``)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._params = {
            n: p for n, p in model.named_parameters() if n.startswith("head.") and p.requires_grad
        }
        if not self._params:
            raise ValueError("the head has no trainable parameter to average (objective 'rl'?)")
        self.shadow = {n: p.detach().clone() for n, p in self._params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """shadow ← decay · shadow + (1 − decay) · parameter, for every averaged parameter."""
        for name, p in self._params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Put the averages into `model`'s parameters (the optimiser's state is left as it is)."""
        params = dict(model.named_parameters())
        for name, value in self.shadow.items():
            params[name].copy_(value)

    def state_dict(self) -> dict[str, Tensor]:
        """Whole CPU tensors by name (collective when sharded: every process calls it)."""
        return {name: whole_on_cpu(value).clone() for name, value in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore averages written by `state_dict` (names and shapes must match)."""
        if set(state) != set(self.shadow):
            missing, unknown = sorted(set(self.shadow) - set(state)), sorted(set(state) - set(self.shadow))
            raise ValueError(f"EMA state does not fit the head: missing {missing[:5]}, unknown {unknown[:5]}")
        for name, value in state.items():
            self.shadow[name].copy_(laid_out_like(value, self.shadow[name]))
