"""`segcompass-sae`: capture activations, train and evaluate sparse autoencoders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points

from .capture.runner import CaptureConfig
from .cli_support import Command, run_cli
from .evaluation.config import EvalConfig, run_eval_command
from .training.config import TrainConfig, run_train_command

DESCRIPTION = (
    "Capture residual-stream activations from multimodal LLMs and train/evaluate sparse autoencoders on "
    "them through sae-lens."
)


@dataclass
class FamiliesConfig:
    """List the registered backbone families, their known checkpoints and default hook layers."""


def list_backbone_families(_: FamiliesConfig) -> None:
    for ep in sorted(entry_points(group="segcompass.backbones"), key=lambda e: e.name):
        family = ep.load()()
        print(f"{family.name}: model_type {', '.join(family.model_types)}")
        for ckpt in family.known_checkpoints:
            print(
                f"  {ckpt.hub_id}: d_in {ckpt.hidden_size}, {ckpt.num_layers} layers, hook layer {ckpt.hook_layer}"
            )
        print(f"  tiny:{family.name}  (random-weight preset, built offline)")


def _capture(cfg) -> None:
    from .capture import run_capture

    result = run_capture(cfg)
    print(
        f"stored {result.num_tokens} tokens in {result.out}"
        + (f" ({len(result.skipped)} documents skipped)" if result.skipped else "")
    )


COMMANDS = [
    Command("capture", CaptureConfig, _capture, "capture hook-layer activations into an activation store"),
    Command("families", FamiliesConfig, list_backbone_families, "list backbone families"),
    Command(
        "train",
        TrainConfig,
        run_train_command,
        "train a sparse autoencoder on an activation store (sae-lens)",
    ),
    Command(
        "evaluate",
        EvalConfig,
        run_eval_command,
        "evaluate an SAE per token type (explained variance, L0, dead atoms)",
    ),
    Command(
        "eval",
        EvalConfig,
        run_eval_command,
        "deprecated alias of `evaluate`",
        deprecated="segcompass-sae evaluate",
    ),
]


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("segcompass-sae", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
