"""SAE training through sae-lens on an activation store: `train_sae(TrainConfig(...))`.

    >>> from sae.training import TrainConfig, train_sae
    >>> result = train_sae(TrainConfig(store="runs/acts", out="runs/sae", preset="tiny"))
    >>> from sae_lens import SAE; sae = SAE.load_from_disk("runs/sae")

Modules: `config` (the documented options), `data` (store → shuffled, filtered, sliced, resumable batches),
`saelens` (our config → sae-lens's SAE and trainer), `sparse_topk` (sparse TopK training pass), `fast` (drops a wasted input gradient),
`checkpoint` (atomic, exact-resume checkpoints), `distributed` (torchrun + DDP), `metadata` (saved SAE
and `segcompass_sae.json`), `monitor` (progress bar, W&B, L0-collapse warning), `trainer` (the loop). Heavy modules load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import PRESETS, TrainConfig

_LAZY = {
    "train_sae": "trainer",
    "TrainResult": "trainer",
    "StepMetrics": "monitor",
    "TrainBatchProvider": "data",
    "BatchSource": "data",
    "load_sae": "metadata",
    "read_metadata": "metadata",
    "SparseTopKTrainingSAE": "sparse_topk",
    "SparseTopKTrainingSAEConfig": "sparse_topk",
    "topk_select": "sparse_topk",
    "sparse_decode": "sparse_topk",
}

__all__ = ["PRESETS", "TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
