"""Reconstruction and sparsity metrics of an SAE on activations, overall and per token type.

Streaming: memory is O(groups · (d_in + d_sae)) whatever the number of tokens. For each group (all tokens,
then each token type present) with n tokens x_t, reconstructions x̂_t and codes h_t:

- `mse`: mean over tokens of ‖x_t − x̂_t‖² (the per-token summed squared error of the training loss);
  `mse_per_dim` = mse / d_in;
- `explained_variance` = 1 − Σ‖x_t − x̂_t‖² / Σ‖x_t − x̄‖², x̄ the group's mean (sae-lens's definition);
  `fvu` = 1 − explained_variance; `relative_error` = sqrt(Σ‖x − x̂‖² / Σ‖x‖²);
- `l0`: mean number of non-zero atoms per token;
- `dead_fraction`: atoms that never fire on the group's tokens; `dense_fraction`: atoms firing on more than
  `dense_threshold` of them.
Sums are float64, so the variance Σ‖x‖² − ‖Σx‖²/n does not cancel catastrophically at large norms.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sae.files import atomic_write_text
from sae.token_types import TokenType

_NUM_TYPES = max(int(t) for t in TokenType) + 1
COLUMNS = [
    "group",
    "tokens",
    "mse",
    "mse_per_dim",
    "explained_variance",
    "fvu",
    "relative_error",
    "l0",
    "dead_fraction",
    "dense_fraction",
]


@dataclass
class EvalResult:
    """Metrics as a table: one row per group ("all" first, then token types by value)."""

    table: pd.DataFrame

    def row(self, group: str = "all") -> dict[str, Any]:
        rows = self.table[self.table["group"] == group]
        if rows.empty:
            raise KeyError(f"no tokens of group {group!r}; groups: {list(self.table['group'])}")
        return rows.iloc[0].to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.table.to_dict(orient="records")}

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write atomically (`sae.files.atomic_write_text`)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


class MetricsAccumulator:
    """Accumulates per-token-type sums over batches; `result()` turns them into an `EvalResult`."""

    def __init__(self, d_in: int, d_sae: int, dense_threshold: float = 0.1) -> None:
        f64 = torch.float64
        self.d_in, self.d_sae, self.dense_threshold = d_in, d_sae, dense_threshold
        self.n = torch.zeros(_NUM_TYPES, dtype=f64)
        self.sq_err = torch.zeros(_NUM_TYPES, dtype=f64)
        self.sq_norm = torch.zeros(_NUM_TYPES, dtype=f64)
        self.sum_x = torch.zeros(_NUM_TYPES, d_in, dtype=f64)
        self.l0 = torch.zeros(_NUM_TYPES, dtype=f64)
        self.fires = torch.zeros(_NUM_TYPES, d_sae, dtype=f64)

    @torch.no_grad()
    def update(
        self, x: torch.Tensor, x_hat: torch.Tensor, acts: torch.Tensor, token_type: torch.Tensor | None
    ) -> None:
        """x, x_hat: [B, d_in]; acts: [B, d_sae] (dense or sparse COO); token_type: [B] or None (all INSTRUCTION)."""
        x, x_hat = x.double().cpu(), x_hat.double().cpu()
        tt = (
            torch.full((x.shape[0],), int(TokenType.INSTRUCTION), dtype=torch.long)
            if token_type is None
            else token_type.long().cpu()
        )
        active = (acts.to_dense() if acts.is_sparse else acts).detach().cpu() != 0
        self.n.index_add_(0, tt, torch.ones_like(tt, dtype=torch.float64))
        self.sq_err.index_add_(0, tt, (x - x_hat).pow(2).sum(-1))
        self.sq_norm.index_add_(0, tt, x.pow(2).sum(-1))
        self.sum_x.index_add_(0, tt, x)
        self.l0.index_add_(0, tt, active.sum(-1).double())
        for t in tt.unique().tolist():
            self.fires[t] += active[tt == t].sum(0)

    @property
    def tokens(self) -> int:
        return int(self.n.sum())

    def result(self) -> EvalResult:
        rows = [self._row("all", slice(None))]
        for t in TokenType:
            if self.n[int(t)] > 0:
                rows.append(self._row(t.name.lower(), slice(int(t), int(t) + 1)))
        return EvalResult(pd.DataFrame(rows, columns=COLUMNS))

    def _row(self, name: str, sel: slice) -> dict[str, Any]:
        n = float(self.n[sel].sum())
        if n == 0:
            return {"group": name, "tokens": 0, **{c: float("nan") for c in COLUMNS[2:]}}
        sq_err, sq_norm = float(self.sq_err[sel].sum()), float(self.sq_norm[sel].sum())
        sum_x = self.sum_x[sel].sum(0)
        total_var = sq_norm - float(sum_x @ sum_x) / n
        ev = 1.0 - sq_err / total_var if total_var > 0 else float("nan")
        freq = self.fires[sel].sum(0) / n
        return {
            "group": name,
            "tokens": int(n),
            "mse": sq_err / n,
            "mse_per_dim": sq_err / n / self.d_in,
            "explained_variance": ev,
            "fvu": 1.0 - ev,
            "relative_error": (sq_err / sq_norm) ** 0.5 if sq_norm > 0 else float("nan"),
            "l0": float(self.l0[sel].sum()) / n,
            "dead_fraction": float((freq == 0).double().mean()),
            "dense_fraction": float((freq > self.dense_threshold).double().mean()),
        }


@torch.no_grad()
def evaluate_sae(
    sae: Any,
    batches: Iterable[Any],
    *,
    max_tokens: int | None = None,
    dense_threshold: float = 0.1,
    chunk_rows: int = 1024,
) -> EvalResult:
    """Metrics of `sae` (any sae-lens SAE: `.encode`, `.decode`, `.cfg.d_in`, `.cfg.d_sae`) over `batches`
    (store batches with `.activations` and `.token_type`, or plain [B, d_in] tensors)."""
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    acc = MetricsAccumulator(d_in, d_sae, dense_threshold)
    device = next(sae.parameters()).device
    was_training = sae.training
    sae.eval()
    try:
        for batch in batches:
            x = batch.activations if hasattr(batch, "activations") else batch
            tt = getattr(batch, "token_type", None)
            if x.shape[-1] != d_in:
                raise ValueError(f"the SAE has d_in={d_in} but the activations have width {x.shape[-1]}")
            if max_tokens is not None:
                room = max_tokens - acc.tokens
                if room <= 0:
                    break
                x, tt = x[:room], (tt[:room] if tt is not None else None)
            for a in range(0, x.shape[0], chunk_rows):
                xs = x[a : a + chunk_rows].to(device)
                acts = sae.encode(xs)
                acc.update(xs, sae.decode(acts), acts, tt[a : a + chunk_rows] if tt is not None else None)
    finally:
        sae.train(was_training)
    return acc.result()
