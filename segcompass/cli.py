"""`segcompass`: the model side's command line (subcommand ``evaluate``; training commands join it)."""

from __future__ import annotations

from collections.abc import Sequence

from sae.cli_support import Command, run_cli
from segcompass.evaluation.command import EvaluateCommandConfig, run_evaluate_command
from segcompass.pretrain.command import PretrainCommandConfig, run_pretrain_command
from segcompass.sam_warmup.command import SamWarmupCommandConfig, run_sam_warmup_command
from segcompass.training.ablation import AblationConfig
from segcompass.training.command import TrainCommandConfig, run_ablation_command, run_train_command
from segcompass.warmup.command import WarmupCommandConfig
from segcompass.warmup.command import main as warmup_main
from segcompass.world.contrast_probe import ContrastProbeConfig, run_contrast_baseline

DESCRIPTION = (
    "SegCompass: reasoning segmentation through sparse-autoencoder concepts. `train` trains the policy and "
    "the head jointly (GRPO + supervision), `evaluate` scores a trained checkpoint, a trivial baseline or the "
    "oracle on any registered data set (one sample per sentence), `ablation` reproduces the synthetic-world "
    "ablation (joint / RL only / seg only × seeds, beside the trivial baselines), `warmup` builds the cached "
    "warmed-up tiny backbone (`warm:<family>`), `warmup-sam` builds the cached tiny SAM that stands in for SAM's pretrained weights on CPU."
)

COMMANDS = [
    Command("train", TrainCommandConfig, run_train_command, "train the policy + head jointly (resumable)"),
    Command(
        "evaluate",
        EvaluateCommandConfig,
        run_evaluate_command,
        "score a checkpoint or a baseline on a data set (gIoU, cIoU, N-acc, T-acc, Pr@t; Parquet/CSV + summary)",
    ),
    Command(
        "ablation", AblationConfig, run_ablation_command, "synthetic-world ablation: joint / RL / seg × seeds"
    ),
    Command(
        "pretrain",
        PretrainCommandConfig,
        run_pretrain_command,
        "build the staged tiny VLM (vision pretraining -> alignment -> instruction tuning), cached by config",
    ),
    Command(
        "contrast-baseline",
        ContrastProbeConfig,
        run_contrast_baseline,
        "linear probes on raw patch pixels: how far pixel contrast alone gets (default vs plain world)",
    ),
    Command(
        "warmup",
        WarmupCommandConfig,
        warmup_main,
        "build the cached warmed-up tiny backbone (`warm:<family>`) and print its held-out evaluation",
    ),
    Command(
        "warmup-sam",
        SamWarmupCommandConfig,
        run_sam_warmup_command,
        "build the cached tiny SAM of the CPU head (SAM's promptable objective on the world)",
    ),
]


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("segcompass", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
