"""SAE evaluation: reconstruction and sparsity metrics per token type, and CE loss with the SAE spliced in.

    >>> from sae.evaluation import evaluate_sae
    >>> result = evaluate_sae(sae, store.batches(4096, shuffle=False, split="val"))
    >>> result.table          # one row for all tokens, one per token type

`metrics` (streaming metrics → pandas + JSON), `splice` (CE loss recovered through nnsight), `run` (the
`segcompass-sae eval` command).
"""

from __future__ import annotations

from typing import Any

from .metrics import EvalResult, MetricsAccumulator, evaluate_sae

_LAZY = {"ce_loss_recovered": "splice", "CELossResult": "splice", "EvalConfig": "run", "run_eval": "run"}

__all__ = ["EvalResult", "MetricsAccumulator", "evaluate_sae", *_LAZY]


def __getattr__(name: str) -> Any:
    """`splice` and `run` (nnsight, sae-lens) load on first use, with plain imports that static tools follow."""
    module = _LAZY.get(name)
    if module == "splice":
        from . import splice as loaded
    elif module == "run":
        from . import run as loaded
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(loaded, name)
