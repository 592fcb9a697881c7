"""SAE training through sae-lens on an activation store: `train_sae(TrainConfig(...))`.

    >>> from sae.training import TrainConfig, train_sae
    >>> result = train_sae(TrainConfig(store="runs/acts", out="runs/sae", preset="tiny"))
    >>> from sae_lens import SAE; sae = SAE.load_from_disk("runs/sae")

Modules: `config` (the documented options), `data` (store → shuffled, filtered, sliced, resumable batches),
`saelens` (our config → sae-lens's SAE and trainer), `sparse_topk` (sparse TopK training pass), `fast` (drops a wasted input gradient),
`checkpoint` (atomic, exact-resume checkpoints), `distributed` (torchrun + DDP), `monitor` (progress bar, W&B, L0-collapse warning), `trainer` (the loop). Heavy modules load on first use.
"""

from __future__ import annotations

from typing import Any

from .config import PRESETS, TrainConfig

_LAZY = {
    "train_sae": "trainer",
    "TrainResult": "trainer",
    "StepMetrics": "monitor",
    "TrainBatchProvider": "data",
    "BatchSource": "data",
    "load_sae": "saved",
    "read_metadata": "saved",
    "SparseTopKTrainingSAE": "sparse_topk",
    "SparseTopKTrainingSAEConfig": "sparse_topk",
    "topk_select": "sparse_topk",
    "sparse_decode": "sparse_topk",
}

__all__ = ["PRESETS", "TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    """The heavy modules (sae-lens) load on first use, with plain imports that static tools follow."""
    module = _LAZY.get(name)
    if module == "trainer":
        from . import trainer as loaded
    elif module == "monitor":
        from . import monitor as loaded
    elif module == "data":
        from . import data as loaded
    elif module == "sparse_topk":
        from . import sparse_topk as loaded
    elif module == "saved":  # the saved SAE has its own home, sae.saved
        from sae import saved as loaded
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(loaded, name)
