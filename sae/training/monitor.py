"""What a training run shows while it runs: a tqdm bar (tokens/s, loss, L0, explained variance), optional
W&B logging (off unless asked), and the collapse warnings (DESIGN §4: the paper's L1 coefficient 5 fits 7B
residual norms and drives L0 to ~0 on small-norm activations).

Two checks, each warned once per run, on the logged batches after the warm-up:

* **L0 collapse** (standard / jumprelu): L0 below `l0_collapse_threshold`.
* **Explained-variance collapse** (every architecture): explained variance at or below
  `ev_collapse_threshold` (0.05) on `EV_PATIENCE` logged batches in a row once `EV_START_FRACTION` of the
  steps are done, or on the last batch. A coefficient that is too strong can leave L0 well above 1 while the
  SAE reconstructs nothing but the batch mean: at coefficient 5 on small-norm activations the explained
  variance was <= 0 from step ~380 while L0 fell below 1 only at step 3400.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

EV_PATIENCE = 3
"""Logged batches in a row with a low explained variance before the warning (one noisy batch is not a trend)."""
EV_START_FRACTION = 0.1
"""The explained-variance check starts after this fraction of the run's steps (and after the warm-up)."""


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
        self.total_steps = total // max(1, int(cfg.batch_size or 1))
        self.warnings: list[str] = []
        """The warnings given (at most one per check), in order; saved in the SAE's metadata."""
        self._warned: set[str] = set()
        self._low_ev_streak = 0
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
        self._check_collapse(m, step, last)

    def _check_collapse(self, m: StepMetrics, step: int, last: bool = False) -> None:
        if step <= self.warm_up_steps:
            return
        fixed_l0 = self.cfg.architecture in ("topk", "batchtopk")
        if not fixed_l0 and m.l0 < self.cfg.l0_collapse_threshold:
            self._warn(
                "l0",
                f"L0 collapsed to {m.l0:.2f} (explained variance {m.explained_variance:.3f}) at step {step}: "
                "the sparsity coefficient is too strong for these activation norms (the paper's 5 fits 7B "
                "residual norms). Use --preset tiny, a smaller --l1-coefficient, or "
                "--normalize-activations expected_average_only_in.",
            )
        self._check_explained_variance(m, step, last, fixed_l0)

    def _check_explained_variance(self, m: StepMetrics, step: int, last: bool, fixed_l0: bool) -> None:
        threshold = self.cfg.ev_collapse_threshold
        if step < EV_START_FRACTION * self.total_steps:
            return
        ev = m.explained_variance
        self._low_ev_streak = self._low_ev_streak + 1 if ev == ev and ev <= threshold else 0  # NaN: not low
        if self._low_ev_streak < EV_PATIENCE and not (last and self._low_ev_streak):
            return
        advice = (
            "a larger --k, or another --lr"
            if fixed_l0
            else "--preset tiny, a smaller --l1-coefficient, or --normalize-activations expected_average_only_in "
            "(the paper's coefficient 5 fits 7B residual norms)"
        )
        self._warn(
            "explained_variance",
            f"explained variance {ev:.3f} <= {threshold:g} on {self._low_ev_streak} logged batch(es) in a row "
            f"at step {step} (L0 {m.l0:.1f}): the SAE reconstructs little more than the batch mean. Use "
            f"{advice}.",
        )

    def _warn(self, check: str, msg: str) -> None:
        if check in self._warned:
            return
        self._warned.add(check)
        self.warnings.append(msg)
        logger.warning(msg)

    def close(self) -> None:
        self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
