"""What a training run shows while it runs: a tqdm bar (tokens/s, loss, L0, explained variance), optional
W&B logging (off unless asked), and the L0-collapse warning (DESIGN §4: the paper's L1 coefficient 5 fits 7B
residual norms and drives L0 to ~0 on small-norm activations)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass
class StepMetrics:
    """Metrics of one training batch (this process's rows)."""

    loss: float
    l0: float
    explained_variance: float


@torch.no_grad()
def step_metrics(out: Any) -> StepMetrics:
    """Loss, mean L0 and explained variance of an sae-lens `TrainStepOutput` (dense or sparse codes)."""
    acts = out.feature_acts
    n = acts.shape[0]
    l0 = float((acts.coalesce().values() != 0).sum()) / n if acts.is_sparse else float((acts != 0).sum()) / n
    x, x_hat = out.sae_in.float(), out.sae_out.float()
    total = (x - x.mean(0)).pow(2).sum()
    ev = float(1 - (x - x_hat).pow(2).sum() / total) if total > 0 else float("nan")
    return StepMetrics(float(out.loss), l0, ev)


class Monitor:
    """Progress bar, W&B and the collapse check of one process (silent off rank 0)."""

    def __init__(
        self,
        cfg: Any,
        *,
        total: int,
        start: int,
        warm_up_steps: int,
        is_main: bool,
    ) -> None:
        self.cfg, self.warm_up_steps, self.is_main = cfg, warm_up_steps, is_main
        self.warnings: list[str] = []
        self.last: StepMetrics | None = None
        self.bar = tqdm(
            total=total,
            initial=start,
            unit="tok",
            unit_scale=True,
            desc="SAE",
            disable=not (is_main and cfg.progress),
        )
        self.wandb = None
        if cfg.wandb and is_main:
            import wandb

            self.wandb = wandb.init(project=cfg.wandb_project, config=cfg.to_dict())

    def after_step(self, trainer: Any, out: Any, tokens: int, batch_tokens: int, last: bool) -> None:
        self.bar.update(batch_tokens)
        step = trainer.n_training_steps
        if step % self.cfg.log_every and not last:
            return
        m = self.last = step_metrics(out)
        self.bar.set_postfix(loss=f"{m.loss:.4g}", l0=f"{m.l0:.1f}", ev=f"{m.explained_variance:.3f}")
        if self.wandb is not None:
            self.wandb.log(trainer.build_train_step_log_dict(out, tokens), step=step)
        self._check_collapse(m, step)

    def _check_collapse(self, m: StepMetrics, step: int) -> None:
        if self.cfg.architecture in ("topk", "batchtopk") or step <= self.warm_up_steps or self.warnings:
            return
        if m.l0 < self.cfg.l0_collapse_threshold:
            msg = (
                f"L0 collapsed to {m.l0:.2f} (explained variance {m.explained_variance:.3f}) at step {step}: "
                "the sparsity coefficient is too strong for these activation norms (the paper's 5 fits 7B "
                "residual norms). Use --preset tiny, a smaller --l1-coefficient, or "
                "--normalize-activations expected_average_only_in."
            )
            self.warnings.append(msg)
            logger.warning(msg)

    def close(self) -> None:
        self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
