"""`train_sae`: an activation store → sae-lens's `SAETrainer` → a saved SAE, resumable and data-parallel.

The loop drives sae-lens's trainer through its public per-step seams (`maybe_reset_sparsity`, `step`,
`set_final_sae_metadata`, `save_checkpoint`, `load_trainer_state`) instead of `fit()`, so that it can add
what sae-lens lacks: checkpoints every N tokens with the data position and RNG (exact resume), torch DDP,
a progress bar with tokens/s, loss, L0 and explained variance, an L0-collapse warning, the validation
evaluation and our metadata. Everything else — the SAE, its loss, Adam, the schedule, clipping, dead-feature
statistics, activation-norm estimation and folding, the saved format — is sae-lens's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sae_lens
import torch

from sae.evaluation.metrics import evaluate_sae
from sae.files import lock_output
from sae.saved import (
    annotate_sae_config,
    commit_final,
    remove_staged,
    stage_final,
    store_description,
)

from . import checkpoint as ckpt
from .cleanup import remove_resume_checkpoints
from .config import TrainConfig, fingerprint
from .data import BatchSource, TrainBatchProvider, check_source, open_store
from .distributed import (
    DistInfo,
    all_agree,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    shutdown,
    unwrap_ddp,
    wrap_ddp,
)
from .monitor import Monitor
from .saelens import build_trainer, build_training_sae

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What `train_sae` returns (on every process; `metadata` and `validation` on rank 0)."""

    sae: Any
    """The trained sae-lens training SAE (activation normalisation folded in)."""
    out: Path
    """The output folder (`sae_lens.SAE.load_from_disk(out)` loads the SAE)."""
    metadata: dict[str, Any]
    """The content of `segcompass_sae.json`."""
    validation: pd.DataFrame | None
    """Validation metrics per token type (None when skipped or empty)."""
    tokens: int
    """Tokens trained on, over all processes."""
    steps: int
    """Optimisation steps."""


def train_sae(cfg: TrainConfig, source: BatchSource | None = None) -> TrainResult:
    """Train an SAE as `cfg` says on `source` (default: the store at `cfg.store`); see the module docstring.

    Under torchrun every process calls this; each reads its own slices of the store. The output folder is
    locked for the run (a second run into it is refused), after the inputs are checked and before anything
    is computed or written.
    """
    cfg = cfg.resolved()
    if not cfg.out:
        raise ValueError("no output folder given (--out)")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    owns_group = not torch.distributed.is_initialized()
    info = init_distributed(cfg.device, cfg.dist_backend)
    try:
        run = _Run(cfg, source if source is not None else open_store(cfg.store), info)
        with lock_output(cfg.out, "SAE training"):
            return run.run()
    finally:
        if owns_group:
            shutdown(info)


class _Run:
    def __init__(self, cfg: TrainConfig, source: BatchSource, info: DistInfo) -> None:
        self.cfg, self.source, self.info = cfg, source, info
        self.out = Path(cfg.out)
        selected = check_source(source, d_in=cfg.d_in, token_types=cfg.token_types)
        self.slices = cfg.data_slices or info.world_size
        if self.slices % info.world_size or cfg.batch_size % self.slices:
            raise ValueError(
                f"batch_size={cfg.batch_size} must be divisible by data_slices={self.slices}, "
                f"itself a multiple of the {info.world_size} processes"
            )
        self.rank_batch = cfg.batch_size // info.world_size
        total = cfg.total_tokens or int(cfg.epochs * selected * (1 - cfg.val_fraction))
        self.total_steps = total // cfg.batch_size
        if self.total_steps < 1:
            raise ValueError(f"{total} training tokens make no step of batch_size={cfg.batch_size}")
        self.found: list[ckpt.Checkpoint] = []
        self.context = {
            "store_id": getattr(source, "store_id", None),
            "d_in": source.d_in,
            "data_slices": self.slices,
        }
        self.fingerprint = all_agree(fingerprint(cfg, **self.context), info)
        self.store = store_description(source, cfg.token_types)
        every = cfg.checkpoint_every_tokens or max(cfg.batch_size, self.total_steps * cfg.batch_size // 10)
        self.checkpoint_every = every

    # ---- set-up --------------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.seed)
        self.sae = build_training_sae(cfg, self.source.d_in, info.device, self.total_steps)
        annotate_sae_config(self.sae, self.store)
        self.provider = TrainBatchProvider(
            self.source,
            batch_size=cfg.batch_size,
            rank=info.rank,
            world_size=info.world_size,
            num_slices=self.slices,
            token_types=cfg.token_types,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        )
        self.trainer = build_trainer(
            cfg,
            self.sae,
            self.provider,
            total_steps=self.total_steps,
            rank_batch=self.rank_batch,
            device=info.device,
        )

    def _resume(self) -> None:
        if not (self.cfg.resume and self.found):
            if self.cfg.resume:
                logger.info("--resume: no checkpoint in %s, starting from scratch", self.out)
            return
        latest = self.found[-1]
        state = ckpt.load_state(latest, self.fingerprint, self.cfg.result_fields(), self.context)
        self.sae.load_weights_from_checkpoint(latest.path)
        self.trainer.load_trainer_state(latest.path)
        self.provider.load_state_dict(state["data"])
        rng = state["rng"]
        if len(rng) == self.info.world_size:
            ckpt.set_rng_state(rng[self.info.rank])
        logger.info("resumed from %s (%d tokens)", latest.path, state["tokens"])

    def _estimate_normalization(self) -> None:
        scaler, cfg = self.trainer.activation_scaler, self.cfg
        if (
            self.sae.cfg.normalize_activations != "expected_average_only_in"
            or scaler.scaling_factor is not None
        ):
            return
        factor = None
        if self.info.is_main:
            probe = TrainBatchProvider(
                self.source, batch_size=cfg.batch_size, token_types=cfg.token_types,
                val_fraction=cfg.val_fraction, seed=cfg.seed + 1,
            )  # fmt: skip
            n = max(1, min(1_000_000, self.total_steps * cfg.batch_size) // cfg.batch_size)
            scaler.estimate_scaling_factor(self.source.d_in, probe, n_batches_for_norm_estimate=n)
            factor = scaler.scaling_factor
        scaler.scaling_factor = broadcast_object(factor, self.info)
        logger.info("activation scaling factor %.4g (mean norm → √d_in)", scaler.scaling_factor)

    # ---- loop --------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        self.found = ckpt.check_out_dir(self.out, cfg.resume)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.remove_temporaries(self.out)
            remove_staged(self.out)
        barrier(info)
        self._build()
        self._resume()
        self._estimate_normalization()
        wrap_ddp(self.sae, info)
        trainer, world = self.trainer, info.world_size
        total = self.total_steps * cfg.batch_size
        warm = max(trainer.cfg.lr_warm_up_steps, int(cfg.l1_warm_up_fraction * self.total_steps))
        start = trainer.n_training_samples * world
        monitor = Monitor(cfg, total=total, start=start, warm_up_steps=warm, is_main=info.is_main)
        while trainer.n_training_steps < self.total_steps:
            trainer.maybe_reset_sparsity()
            out = trainer.step(next(self.provider))
            trainer.n_training_steps += 1
            tokens = trainer.n_training_samples * world
            last = trainer.n_training_steps == self.total_steps
            monitor.after_step(trainer, out, tokens, cfg.batch_size, last)
            if (
                not last
                and tokens // self.checkpoint_every > (tokens - cfg.batch_size) // self.checkpoint_every
            ):
                self._checkpoint(tokens)
        monitor.close()
        unwrap_ddp(self.sae)
        return self._finish(total, monitor.warnings)

    def _checkpoint(self, tokens: int) -> None:
        data = gather_objects(self.provider.state_dict(), self.info)
        rng = gather_objects(ckpt.rng_state(), self.info)
        if self.info.is_main:
            merged = {k: v for d in data for k, v in d.items()}
            state = {
                "fingerprint": self.fingerprint,
                "config": self.cfg.result_fields(),
                "context": self.context,
                "data": merged,
                "rng": rng,
                "world_size": self.info.world_size,
            }
            ckpt.save_checkpoint(self.trainer, self.out, tokens, state, self.cfg.keep_checkpoints)
        barrier(self.info)

    def _finish(self, total: int, warnings: list[str]) -> TrainResult:
        trainer, sae, cfg = self.trainer, self.sae, self.cfg
        trainer.set_final_sae_metadata()
        scaler = trainer.activation_scaler
        if scaler.scaling_factor is not None:  # as sae-lens's fit(): fold the normalisation into the weights
            sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
            scaler.scaling_factor = None
        metadata: dict[str, Any] = {}
        validation = None
        if self.info.is_main:
            staged = stage_final(sae, self.out, trainer.log_feature_sparsity)
            validation = self._validate(staged)
            metadata = {
                **self.store,
                "architecture": cfg.architecture,
                "d_sae": cfg.d_sae,
                "train_tokens": total,
                "train_steps": self.total_steps,
                "world_size": self.info.world_size,
                "fingerprint": self.fingerprint,
                "config": cfg.to_dict(),
                "final_l0_window": sae.cfg.metadata.l0,
                "num_dead_features": sae.cfg.metadata.num_dead_features,
                "warnings": warnings,
                "validation": None if validation is None else validation.to_dict(orient="records"),
                "sae_lens_version": sae_lens.__version__,
                "torch_version": torch.__version__,
            }
            commit_final(staged, self.out, metadata)
            logger.info("saved the SAE to %s", self.out)
            if not cfg.keep_final_checkpoints:  # only after the SAE is in place
                remove_resume_checkpoints(self.out)
        barrier(self.info)
        return TrainResult(sae, self.out, metadata, validation, total, self.total_steps)

    def _validate(self, staged: Path) -> pd.DataFrame | None:
        cfg = self.cfg
        if cfg.val_max_tokens <= 0 or cfg.val_fraction <= 0:
            return None
        inference = sae_lens.SAE.load_from_disk(str(staged), device=self.info.device)
        batches = self.source.batches(
            min(4096, cfg.batch_size),
            shuffle=False,
            token_types=cfg.token_types,
            split="val",
            val_fraction=cfg.val_fraction,
        )
        result = evaluate_sae(inference, batches, max_tokens=cfg.val_max_tokens)
        if result.row("all")["tokens"] == 0:
            logger.warning("the validation split is empty; no validation metrics")
            return None
        row = result.row("all")
        logger.info(
            "validation (%d tokens): explained variance %.4f, L0 %.2f, dead %.3f",
            row["tokens"], row["explained_variance"], row["l0"], row["dead_fraction"],
        )  # fmt: skip
        return result.table
