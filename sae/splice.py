"""One nnsight wrapper for the hook layer: read its output, or splice something else in.

Every nnsight user here — activation capture (`sae.capture.backends`), the CE-loss-recovered evaluation
(`sae.evaluation.splice`) and the causal check through the backbone (`analysis.attribution.causal_splice`) —
wraps the already-built HF model in nnsight's `TransformersModel` (no reload, no copy) and walks to the
output of decoder block L − 1 (= HF `hidden_states[L]`, the states an SAE reads). This module does both once.

The backbone is duck-typed (`sae` never imports `segcompass`): `.model`, `.processor`, `.decoder_layers`,
`.hook_layer` (and optionally `.hidden_size`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def module_path(root: torch.nn.Module, target: torch.nn.Module) -> str:
    """The dotted name of `target` inside `root` (`ValueError` when it is not there)."""
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError("the hook layer's module is not part of the backbone's model")


def first(output: Any) -> Any:
    """A decoder block's hidden states (blocks return a tuple or a tensor)."""
    return output[0] if isinstance(output, tuple) else output


def check_sae_fits(backbone: Any, sae: Any) -> None:
    """`ValueError` when the SAE's d_in is not the backbone's hidden size."""
    hidden = getattr(backbone, "hidden_size", None)
    if hidden is not None and int(hidden) != int(sae.cfg.d_in):
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in} but the backbone's hidden size is {hidden}")


class HookLayer:
    """nnsight's `TransformersModel` around a built backbone, and its hook layer's envoy.

    Use inside `with hook.lm.trace(...)` / `hook.lm.generate(...)`: `hook.output()` is the layer's hidden
    states; `hook.splice(replace)` rewrites them with `replace(states)` and returns (clean, spliced).
    """

    def __init__(self, backbone: Any) -> None:
        from nnsight.modeling.transformers import TransformersModel

        self.lm = TransformersModel(
            backbone.model,
            processor=backbone.processor,
            tokenizer=backbone.processor.tokenizer,
            task="image-text-to-text",
        )
        self.path = module_path(backbone.model, backbone.decoder_layers[backbone.hook_layer - 1])

    def envoy(self) -> Any:
        """The hook layer's envoy (walks `path` from the wrapped model)."""
        envoy = self.lm
        for part in self.path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def output(self) -> Any:
        """The hook layer's hidden states (inside a trace)."""
        return first(self.envoy().output)

    def splice(self, replace: Callable[[Any], Any]) -> tuple[Any, Any]:
        """Replace the hook layer's hidden states by `replace(states)` (inside a trace); (clean, spliced)."""
        layer = self.envoy()
        out = layer.output
        clean = first(out)
        spliced = replace(clean)
        layer.output = (spliced, *out[1:]) if isinstance(out, tuple) else spliced
        return clean, spliced
