"""Our `TrainConfig` → sae-lens's own training-SAE config and `SAETrainer` (nothing re-implemented).

The architectures, their losses (the standard SAE's decoder-norm-weighted L1 is sae-lens's
`StandardTrainingSAE` with `lp_norm=1`), the Adam optimiser, the warm-up + cosine schedule, gradient
clipping, dead-feature tracking and the saved format all come from sae-lens; the only substitution is the
optional sparse TopK training pass (`sparse_topk.py`), which computes the same loss.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    SAETrainer,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.training.optim import get_lr_scheduler
from sae_lens.training.types import DataProvider

from .config import TrainConfig
from .fast import without_wasted_input_grad
from .sparse_topk import SparseTopKTrainingSAE, SparseTopKTrainingSAEConfig

logger = logging.getLogger(__name__)


def build_training_sae(cfg: TrainConfig, d_in: int, device: str, total_steps: int) -> TrainingSAE:
    """A freshly initialised sae-lens training SAE for `cfg` (initialised from torch's global RNG)."""
    common: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": device,
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "decoder_init_norm": cfg.decoder_init_norm,
    }
    arch = cfg.architecture
    if arch == "standard":
        sae_cfg: Any = StandardTrainingSAEConfig(
            **common,
            l1_coefficient=cfg.l1_coefficient,
            lp_norm=1.0,
            l1_warm_up_steps=int(cfg.l1_warm_up_fraction * total_steps),
        )
        cls: type[TrainingSAE] = StandardTrainingSAE
    elif arch == "topk" and cfg.sparse_topk:
        sae_cfg = SparseTopKTrainingSAEConfig(
            **common, k=int(cfg.k), sparse_chunk_elements=cfg.sparse_chunk_elements
        )
        cls = SparseTopKTrainingSAE
    elif arch == "topk":
        sae_cfg, cls = TopKTrainingSAEConfig(**common, k=int(cfg.k)), TopKTrainingSAE
    elif arch == "batchtopk":
        sae_cfg, cls = BatchTopKTrainingSAEConfig(**common, k=float(cfg.k)), BatchTopKTrainingSAE
    elif arch == "jumprelu":
        sae_cfg = JumpReLUTrainingSAEConfig(
            **common,
            jumprelu_init_threshold=cfg.jumprelu_init_threshold,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
            l0_coefficient=cfg.l0_coefficient,
        )
        cls = JumpReLUTrainingSAE
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose standard, topk, batchtopk or jumprelu")
    sae_fields = {f.name for f in dataclasses.fields(sae_cfg)}
    extra = {k: v for k, v in cfg.extra.items() if k in sae_fields}
    if extra:
        sae_cfg = dataclasses.replace(sae_cfg, **extra)
    return without_wasted_input_grad(cls)(sae_cfg)


def build_trainer(
    cfg: TrainConfig,
    sae: TrainingSAE,
    provider: DataProvider,
    *,
    total_steps: int,
    rank_batch: int,
    device: str,
) -> SAETrainer:
    """sae-lens's `SAETrainer` for `total_steps` steps of `rank_batch` rows on this process."""
    extra = {
        k: v for k, v in cfg.extra.items() if k in {f.name for f in dataclasses.fields(SAETrainerConfig)}
    }
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_steps * rank_batch,
        train_batch_size_samples=rank_batch,
        lr=cfg.lr,
        lr_end=cfg.lr * cfg.lr_end_fraction,
        lr_scheduler_name=cfg.lr_scheduler,
        lr_warm_up_steps=int(cfg.lr_warm_up_fraction * total_steps),
        lr_decay_steps=0,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        device=device,
        autocast=cfg.autocast,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.feature_sampling_window,
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
        **extra,
    )
    trainer = SAETrainer(trainer_cfg, sae, data_provider=provider)
    if cfg.weight_decay > 0 or cfg.fused_optimizer:
        # Same update rule as sae-lens's Adam (AdamW when weight decay is asked for), through torch's fused
        # kernel (several times faster on CPU; the optimizer step touches every parameter once per batch);
        # the scheduler is rebuilt on it with sae-lens's own function and settings.
        opt_cls = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
        trainer.optimizer = opt_cls(
            sae.parameters(),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
            fused=cfg.fused_optimizer or None,
        )
        trainer.lr_scheduler = get_lr_scheduler(
            trainer_cfg.lr_scheduler_name,
            optimizer=trainer.optimizer,
            training_steps=trainer_cfg.total_training_steps,
            lr=cfg.lr,
            warm_up_steps=trainer_cfg.lr_warm_up_steps,
            decay_steps=trainer_cfg.lr_decay_steps,
            lr_end=trainer_cfg.lr_end,
            num_cycles=trainer_cfg.n_restart_cycles,
        )
    return trainer
