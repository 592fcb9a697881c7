"""Options of `segcompass-sae evaluate` (imports nothing heavy, so `--help` is fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EvalConfig:
    """Evaluate an SAE on an activation store: explained variance / FVU, MSE, L0, dead and dense atoms, overall
    and per token type; optionally the LM loss with the SAE spliced into the backbone (CE loss recovered)."""

    sae: str = ""
    """SAE folder (sae-lens format; `segcompass-sae train --out`)."""
    store: str = ""
    """Activation store folder; its width, backbone and hook layer must match the SAE's."""
    out: str = ""
    """Folder for eval.json and eval.csv (default: only print the table)."""
    overwrite: bool = False
    """Replace an existing eval.json / eval.csv in --out."""
    split: Literal["val", "train", "all"] = "val"
    """Which documents of the store: the SAE's held-out validation split, its training split, or all."""
    val_fraction: float | None = None
    """Validation fraction defining the split (default: the one the SAE was trained with, else 0.05)."""
    token_types: list[str] | None = None
    """Only these token types (default: all in the store)."""
    max_tokens: int = 1_000_000
    """Evaluate at most this many tokens."""
    batch_size: int = 4096
    """Rows per store batch."""
    dense_threshold: float = 0.1
    """An atom firing on more than this fraction of a group's tokens counts as dense."""
    device: str = "cpu"
    """Device of the SAE (and backbone)."""
    ce_backbone: str = ""
    """Also measure CE loss recovered on this backbone (`tiny:<family>`, folder or hub id; needs --ce-data)."""
    ce_data: str = ""
    """Image–text data for the CE measurement (same layouts as `segcompass-sae capture --data`)."""
    ce_documents: int = 64
    """Documents used for the CE measurement."""
    ce_batch_size: int = 8
    """Documents per backbone forward in the CE measurement."""


def run_eval_command(cfg: EvalConfig) -> None:
    """`segcompass-sae evaluate`: print the metrics table (and the CE result), write them when --out is given."""
    from .run import run_eval

    report = run_eval(cfg)
    print(report["table"].to_string(index=False))
    if report.get("ce_loss") is not None:
        ce = report["ce_loss"]
        print(
            f"CE loss: clean {ce['clean']:.4f}, SAE spliced {ce['spliced']:.4f}, zero-ablated "
            f"{ce['zero_ablation']:.4f}, recovered {ce['recovered']:.4f} ({ce['tokens']} tokens)"
        )
    if report.get("written"):
        print(f"wrote {', '.join(report['written'])}")
