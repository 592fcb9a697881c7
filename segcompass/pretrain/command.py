"""`segcompass pretrain`: build the staged tiny VLM (the stages that are missing), then evaluate it held out
beside a random-init control and print where it lives."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from segcompass.backbones import build_tiny, load_backbone

from .evaluation_table import evaluate_stack
from .pool import ScenePool
from .stack import COMMITTABLE, IMAGE_PIXELS, StackConfig, build_stack, scene_pool, set_image_pixels

logger = logging.getLogger(__name__)

EVAL_FILE = "evaluation.csv"
"""Written beside the instruction-tuned backbone: held-out figures of it and of the random-init control."""

_DEFAULT = StackConfig()


@dataclass
class PretrainCommandConfig:
    """Build the staged tiny VLM once (text and vision pretraining → alignment → instruction tuning), cached
    by config."""

    seed: int = 0
    """Seed of the init, the batch order and the dialogues."""
    object_recall_steps: int = _DEFAULT.object_recall.schedule.steps
    """Stage 0's first phase, steps of 128 (short scenes as object vectors, one token per object, look-up
    questions with attention grounding on layers 2–3; 0: none). Measured: 2000 (results/warmup.md)."""
    object_image_steps: int = _DEFAULT.object_image.schedule.steps
    """Stage 0's second phase, steps of 32 (whole scenes as oracle image tokens on the image grid; 0: none).
    Measured: 3200 after the first phase reads oracle tokens at colour 0.98, shape 0.95 (results/warmup.md)."""
    reasoning_steps: int = _DEFAULT.reasoning.schedule.steps
    """Stage 0b, steps of 32 after stage 0 (oracle image tokens, the grounded format turn among the look-up
    turns; 0: none, stage 2 starts from stage 0). Measured on images after stage 3, two seeds each: 3200 over
    1600 lift the reasoning 0.27 → 0.34 and its opening 0.25 → 0.72 (session (11)); 6400 over 3200 lift the
    reasoning 0.35 / 0.36 → 0.46 / 0.46 (results/warmup.md, sessions (14)–(15))."""
    reasoning_words: float = _DEFAULT.reasoning.words
    """Stage 0b: the share of its sequences with the scene in words and the format turn instead of the
    oracle tokens. Measured: 0.25 and 0.5 lower both the reasoning and the look-up (results/warmup.md)."""
    recall_steps: int = _DEFAULT.recall.schedule.steps
    """Stage 0's recall-phase steps (short scenes in words, look-up questions, large batches; 0: none)."""
    recall_name_with_size: bool = _DEFAULT.recall.name_with_size
    """The recall phase's colour / shape / position questions name the object with its size too ("the
    medium star"; the names with which the colour look-up formed, results/warmup.md)."""
    text_steps: int = _DEFAULT.text.steps
    """Stage 0 optimiser steps (language model on the scenes in words + questions)."""
    vision_steps: int = _DEFAULT.vision.steps
    """Stage 1 optimiser steps (vision tower + merger)."""
    vision_final_steps: int = _DEFAULT.vision_final.steps
    """Stage 1b, steps of 16 after stage 1: the tower + merger on stage 1's objective again at the final
    image size (0: none, stage 2 starts from stage 1). Measured: each token's shape probe 0.64 → 0.77 (2000)
    → 0.79 (4000; results/warmup.md, sessions (10)–(11))."""
    vision_final_count_weight: float = 0.0
    """Stage 1b: weight of a per-token count target added to stage 1's objective (each object token → how
    many objects of its colour and of its kind the image holds; 0: stage 1's objective alone)."""
    align_steps: int = _DEFAULT.align.steps
    """Stage 2 optimiser steps (descriptions)."""
    align_trains: str = _DEFAULT.align_trains
    """What stage 2 trains: "language" (the language model), "merger" (the merger alone, language model
    frozen, as LLaVA's first stage) or "oracle" (the merger's last layer fitted in closed form to the oracle
    tokens of stage 0's object phases)."""
    tower_tuning_steps: int = _DEFAULT.tower_tuning.schedule.steps
    """Stage 2 after the fit (--align-trains oracle): steps of 32 tuning the tower and merger through the
    frozen language model on questions about named objects, with grounding (0: the fit alone). Measured:
    1000 steps lift the answers before stage 3 but not after it (results/warmup.md, session (8))."""
    tower_tuning_oracle_weight: float = _DEFAULT.tower_tuning.oracle_weight
    """Weight of the tuning's regression of the image tokens to the oracle tokens (0: the questions alone)."""
    instruct_steps: int = _DEFAULT.instruct.steps
    """Stage 3 optimiser steps of 32 (multi-turn questions + output format). Measured: 2000 over 1000 on two
    seeds each: position 0.66 → 0.72, shape 0.68 → 0.71, colour 0.80 → 0.81 (results/warmup.md, session (12))."""
    format_first: float = _DEFAULT.format_first
    """Stage 3: of the sequences with a format turn, the share where it is the first turn (the instruction as
    the first prompt with the image) rather than after the questions."""
    slot_grounding: bool = _DEFAULT.slot_grounding
    """Stage 3: ground the format turn's `<REF_POS>` tokens on the instruction's targets (the state the head
    reads as e_k attends to its target's image tokens; the stand-in for referring-expression grounding data)."""
    count_listing: bool = _DEFAULT.count_listing
    """Stage 3: answer count questions by listing the objects counted, then the number ("Circles: the small
    red circle at the top left and … So 2."), each listed phrase grounded on its object. The direct count fails
    from three objects on, on oracle tokens too (results/warmup.md, session (13))."""
    reasoning_order: str = _DEFAULT.reasoning_order
    """Stages 0b and 3: how the format turn's reasoning lists several objects: "paint" (the world's data: the
    order they were painted in, which the image shows only where they overlap) or "reading" (rows of the
    3 × 3 grid top to bottom, then left to right, which the image shows)."""
    grounding_weight: float = _DEFAULT.grounding.weight
    """Stage 3 attention-grounding weight: answers about a named object attend to its image tokens (0: off)."""
    num_slots: int = _DEFAULT.num_slots
    """K: the `<REF_POS>` tokens the format turns end with (the policy's K; part of every stage's key from
    stage 0 on, so another K rebuilds the whole stack — `stack:qwen2_5_vl` is the one with the default)."""
    train_scenes: int = _DEFAULT.train_scenes
    """Training scenes shared by the stages."""
    val_scenes: int = _DEFAULT.val_scenes
    """Held-out scenes for the figures."""
    cache_dir: str = ""
    """Cache root (default `$SEGCOMPASS_CACHE` or `~/.cache/segcompass`)."""
    evaluate: bool = True
    """Evaluate the result and the random-init control (a few minutes; written once beside the model)."""
    threads: int = 0
    """torch threads (0: torch's default; with --reproduce, the count the stage was built with)."""
    reproduce: str = ""
    """A committed stage's key (`checkpoints/MANIFEST.json`): rebuild it from the config its stage.json
    records, in a temporary cache, compare every tensor with the committed weights, print the verdict and exit
    with 1 when they differ. The flags that describe the stack are ignored."""


def stack_config(cfg: PretrainCommandConfig) -> StackConfig:
    """The `StackConfig` the command's flags describe."""
    d = _DEFAULT
    return StackConfig(
        seed=cfg.seed,
        num_slots=cfg.num_slots,
        train_scenes=cfg.train_scenes,
        val_scenes=cfg.val_scenes,
        object_recall=replace(
            d.object_recall, schedule=replace(d.object_recall.schedule, steps=cfg.object_recall_steps)
        ),
        object_image=replace(
            d.object_image, schedule=replace(d.object_image.schedule, steps=cfg.object_image_steps)
        ),
        reasoning=replace(
            d.reasoning,
            schedule=replace(d.reasoning.schedule, steps=cfg.reasoning_steps),
            words=cfg.reasoning_words,
        ),
        recall=replace(
            d.recall,
            schedule=replace(d.recall.schedule, steps=cfg.recall_steps),
            name_with_size=cfg.recall_name_with_size,
        ),
        text=replace(d.text, steps=cfg.text_steps),
        vision=replace(d.vision, steps=cfg.vision_steps),
        vision_final=replace(d.vision_final, steps=cfg.vision_final_steps),
        vision_final_objective=(
            replace(d.vision_objective, token_count_weight=cfg.vision_final_count_weight)
            if cfg.vision_final_count_weight > 0
            else None
        ),
        align=replace(d.align, steps=cfg.align_steps),
        align_trains=cfg.align_trains,
        tower_tuning=replace(
            d.tower_tuning,
            schedule=replace(d.tower_tuning.schedule, steps=cfg.tower_tuning_steps),
            oracle_weight=cfg.tower_tuning_oracle_weight,
        ),
        instruct=replace(d.instruct, steps=cfg.instruct_steps),
        format_first=cfg.format_first,
        slot_grounding=cfg.slot_grounding,
        count_listing=cfg.count_listing,
        reasoning_order=cfg.reasoning_order,
        grounding=replace(d.grounding, weight=cfg.grounding_weight),
    )


def evaluate_folder(folder: Path, config: StackConfig) -> pd.DataFrame:
    """Held-out figures of the model in `folder` and of the same architecture at random init."""
    train = scene_pool(config, "train", IMAGE_PIXELS)
    val = scene_pool(config, "val", IMAGE_PIXELS)
    probe_train = ScenePool("train", train.scenes[: min(300, len(train))])
    trained = load_backbone(folder)
    set_image_pixels(trained, *IMAGE_PIXELS)
    control = build_tiny(config.family, seed=config.seed, spec=config.tiny_spec())
    set_image_pixels(control, *IMAGE_PIXELS)
    tables = [
        evaluate_stack(trained, probe_train, val, "trained", config.num_slots),
        evaluate_stack(control, probe_train, val, "random_init", config.num_slots),
    ]
    return pd.concat(tables, ignore_index=True)


def run_pretrain_command(cfg: PretrainCommandConfig) -> None:
    if cfg.reproduce:
        from segcompass.reproduce import print_reproduction

        print_reproduction(cfg.reproduce, COMMITTABLE, cfg.threads)
        return
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    config = stack_config(cfg)
    folder = build_stack(config, cfg.cache_dir or None)
    table_path = folder / EVAL_FILE
    if cfg.evaluate and not table_path.exists():
        from sae.files.atomic import atomic_write

        table = evaluate_folder(folder, config)
        atomic_write(table_path, lambda p: table.to_csv(p, index=False))
    summary = {"backbone": str(folder)}
    if table_path.exists():
        summary["evaluation"] = pd.read_csv(table_path).to_dict("records")
    print(json.dumps(summary, indent=2))
