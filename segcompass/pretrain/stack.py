"""The staged tiny VLM, each stage cached: text pretraining of the language model (0, optionally followed
by its reasoning phase, 0b) and vision pretraining of the tower (1, optionally followed by a phase at the
final size, 1b), then alignment (2, from both) and instruction tuning (3).

Every stage writes a full backbone folder (`Backbone.save`), so each one loads through `load_backbone`
like a real checkpoint, plus `metrics.json` with its held-out figures. A stage's config nests the configs
of the stages it starts from (`config.py`), so a change early on gives every later stage a new key, and
nothing before it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segcompass.backbones import Backbone, build_tiny, load_backbone
from segcompass.stages import Stage, build_stage, stage_folder
from segcompass.world.config import WorldConfig

from .align import fit_merger_readout
from .config import IMAGE_PIXELS, StackConfig
from .dialogue import Dialogue, describe_turn, qa_dialogue
from .evaluate import named_object_sensitivity, question_accuracy, reasoning_accuracy
from .language import FeatureCache, adopt_language_model, train_dialogues
from .object_phase import train_object_phase
from .object_vectors import ObjectVectorCache
from .pool import ProcessorGrid, ScenePool, scene_pool, set_image_pixels
from .probe import merged_tokens, token_probes
from .text import text_samples, train_text
from .tower_tuning import tune_tower_on_questions
from .vision import train_tower

__all__ = [
    "ALIGN",
    "IMAGE_PIXELS",
    "INSTRUCT",
    "REASON",
    "TEXT",
    "VISION",
    "VISION_FINAL",
    "ProcessorGrid",
    "StackConfig",
    "build_stack",
    "scene_pool",
    "set_image_pixels",
    "stack_folder",
]

logger = logging.getLogger(__name__)

BUILD_COMMAND = "segcompass pretrain"
"""The command that builds the stack's stages (named by `StageMissing`)."""


def vision_pixel_range(config: StackConfig) -> tuple[int, int]:
    """(min, max) pixels of stage 1's image processor (about `config.vision_pixels` per image)."""
    return (config.vision_pixels - 28 * 28 * 2, config.vision_pixels)


def _save(backbone: Backbone, folder: Path, metrics: dict[str, Any]) -> None:
    backbone.save(folder)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float))


# ---- stage 0 -----------------------------------------------------------------------------------------
def build_text(stage_config: dict[str, Any], folder: Path) -> None:
    """Stage 0: train the language model on scenes given as object vectors (`object_phase.py`, when its
    phases have steps), then on text dialogues (`text.py`); held-out figures on the val scenes in words
    (and on their oracle image tokens after an object phase), beside the same model at random init."""
    config = StackConfig.from_stage(stage_config)
    torch.manual_seed(config.seed)
    backbone = build_tiny(config.family, seed=config.seed, spec=config.tiny_spec())
    val = scene_pool(config, "val", IMAGE_PIXELS)
    phases = [p for p in (config.object_recall, config.object_image) if p.schedule.steps > 0]

    def figures(label: str) -> list[dict]:
        rows = question_accuracy(backbone, val, label, text=True)
        rows += named_object_sensitivity(backbone, val, label, text=True)
        if phases:  # the val scenes' oracle image tokens: what stage 0 reads where a perfect tower would be
            oracle = ObjectVectorCache(backbone, val)
            read = question_accuracy(backbone, val, label, oracle)
            read += named_object_sensitivity(backbone, val, label, oracle)
            rows += [{**r, "measure": f"oracle_{r['measure']}"} for r in read]
        return rows

    control = figures("random_init")
    samples = text_samples(WorldConfig(**config.world), "train", config.text_scenes, workers=2)
    wall = 0.0
    for i, phase in enumerate(phases):
        images = scene_pool(config, "train", IMAGE_PIXELS) if phase.layout == "image" else None
        seed = config.seed * 7919 + 10 + i
        wall += train_object_phase(backbone, phase, seed, samples, images, num_slots=config.num_slots).wall_s
    record = train_text(
        backbone,
        samples,
        config.text,
        config.questions_per_dialogue,
        config.format_probability,
        config.num_slots,
        config.seed * 7919,
        recall=config.recall,
    )
    metrics = {
        "wall_s": wall + record.wall_s,
        "final_loss": record.losses[-1] if record.losses else None,
        "text_questions": figures("trained") + control,
    }
    _save(backbone, folder, metrics)


# ---- stage 0b ----------------------------------------------------------------------------------------
def build_reasoning(stage_config: dict[str, Any], folder: Path) -> None:
    """Stage 0b: stage 0's language model trained on the reasoning phase (`StackConfig.reasoning`: oracle
    image tokens, the grounded format turn among the look-up turns); held-out figures on the val scenes'
    oracle tokens — the look-up and the greedy reasoning — before and after."""
    config = StackConfig.from_stage(stage_config)
    torch.manual_seed(config.seed)
    backbone = load_backbone(build_stage(TEXT, stage_config["previous"]))
    set_image_pixels(backbone, *IMAGE_PIXELS)
    val = scene_pool(config, "val", IMAGE_PIXELS)

    def figures(label: str) -> list[dict]:
        oracle = ObjectVectorCache(backbone, val)
        rows = question_accuracy(backbone, val, label, oracle)
        rows += named_object_sensitivity(backbone, val, label, oracle)
        return rows + reasoning_accuracy(backbone, val, label, config.num_slots, image_tokens=oracle)

    before = figures("stage_0")
    train = scene_pool(config, "train", IMAGE_PIXELS)
    record = train_object_phase(
        backbone, config.reasoning, config.seed * 7919 + 4, images=train, num_slots=config.num_slots
    )
    metrics = {
        "wall_s": record.wall_s,
        "final_loss_parts": record.parts[-1] if record.parts else {},
        "oracle_tokens": figures("trained") + before,
    }
    _save(backbone, folder, metrics)


# ---- stage 1 -----------------------------------------------------------------------------------------
def _tower_probes(backbone: Backbone, probe_train: ScenePool, val: ScenePool) -> dict[str, dict]:
    """The merged-token probes (`probe.token_probes`) fitted on `probe_train`, scored on `val`."""
    train_tokens, val_tokens = merged_tokens(backbone, probe_train), merged_tokens(backbone, val)
    return {k: asdict(v) for k, v in token_probes(train_tokens, probe_train, val_tokens, val).items()}


def build_vision(stage_config: dict[str, Any], folder: Path) -> None:
    """Stage 1: train the tower + merger on the vision objectives at `vision_pixels`; probe the merged
    tokens of held-out scenes (and of the same tower at random init)."""
    config = StackConfig.from_stage(stage_config)
    torch.manual_seed(config.seed)
    backbone = build_tiny(config.family, seed=config.seed, spec=config.tiny_spec())
    set_image_pixels(backbone, *vision_pixel_range(config))
    train, val = (
        scene_pool(config, "train", vision_pixel_range(config)),
        scene_pool(config, "val", vision_pixel_range(config)),
    )
    probe_train = ScenePool("train", train.scenes[:500])
    control = _tower_probes(backbone, probe_train, val)
    record = train_tower(
        backbone, train, config.vision, config.vision_objective, config.seed, "stage 1: vision"
    )
    trained = _tower_probes(backbone, probe_train, val)
    set_image_pixels(backbone, *IMAGE_PIXELS)
    metrics = {
        "wall_s": record.wall_s,
        "final_loss_parts": record.parts[-1] if record.parts else {},
        "merged_token_probes": trained,
        "merged_token_probes_random_init": control,
    }
    _save(backbone, folder, metrics)


# ---- stage 1b ----------------------------------------------------------------------------------------
def build_vision_final(stage_config: dict[str, Any], folder: Path) -> None:
    """Stage 1b: stage 1's tower + merger trained on stage 1's objective again, at the final size
    (`IMAGE_PIXELS`); the merged-token probes at that size before (stage 1 as built) and after."""
    config = StackConfig.from_stage(stage_config)
    torch.manual_seed(config.seed)
    backbone = load_backbone(build_stage(VISION, stage_config["previous"]))
    set_image_pixels(backbone, *IMAGE_PIXELS)
    train, val = scene_pool(config, "train", IMAGE_PIXELS), scene_pool(config, "val", IMAGE_PIXELS)
    probe_train = ScenePool("train", train.scenes[:500])
    before = _tower_probes(backbone, probe_train, val)
    record = train_tower(
        backbone,
        train,
        config.vision_final,
        config.final_vision_objective(),
        config.seed * 7919 + 5,
        "stage 1b: vision at the final size",
    )
    metrics = {
        "wall_s": record.wall_s,
        "final_loss_parts": record.parts[-1] if record.parts else {},
        "merged_token_probes": _tower_probes(backbone, probe_train, val),
        "merged_token_probes_stage_1": before,
    }
    _save(backbone, folder, metrics)


# ---- stages 2 and 3 ------------------------------------------------------------------------------------
def _train_language(config: StackConfig, previous: Path, folder: Path, which: str) -> None:
    backbone = load_backbone(previous)
    if which == "align":  # stage 1's tower under stage 0's (or 0b's) language model
        name, language = config.language_stage()
        adopt_language_model(backbone, load_backbone(build_stage(LANGUAGE_STAGES[name], language)))
    set_image_pixels(backbone, *IMAGE_PIXELS)
    train = scene_pool(config, "train", IMAGE_PIXELS)
    trains = config.align_trains if which == "align" else "language"
    if trains == "oracle":  # a closed-form fit, then (optionally) the tower tuned through the reader
        start = time.perf_counter()
        metrics: dict[str, Any] = {"merger_readout": fit_merger_readout(backbone, train)._asdict()}
        tuning = config.tower_tuning
        if tuning.schedule.steps > 0:
            record = tune_tower_on_questions(backbone, train, tuning, config.seed * 7919 + 3)
            metrics["tower_tuning"] = {"wall_s": record.wall_s, "final_loss_parts": record.parts[-1]}
        _save(backbone, folder, {"wall_s": time.perf_counter() - start, **metrics})
        return
    cache = FeatureCache(backbone, train, live_merger=trains == "merger")
    if which == "align":
        schedule = config.align

        def make(scene: int, rng: np.random.Generator) -> Dialogue:
            return Dialogue(scene, (describe_turn(train[scene].sample),))

    else:
        schedule = config.instruct

        def make(scene: int, rng: np.random.Generator) -> Dialogue:
            return qa_dialogue(
                scene,
                train[scene].sample,
                rng,
                config.questions_per_dialogue,
                config.format_probability,
                config.num_slots,
                config.format_first,
                config.slot_grounding,
                config.count_listing,
            )

    seed = config.seed * 7919 + (1 if which == "align" else 2)
    grounding = config.grounding if which == "instruct" else None
    record = train_dialogues(
        backbone, train, cache, schedule, make, seed, f"stage: {which}", grounding=grounding, trains=trains
    )
    _save(
        backbone,
        folder,
        {"wall_s": record.wall_s, "final_loss": record.losses[-1] if record.losses else None},
    )


def build_align(stage_config: dict[str, Any], folder: Path) -> None:
    """Stage 2: the image tokens made readable for stage 0's (or 0b's) language model — the merger's last layer
    fitted to the oracle tokens, then optionally the tower and merger tuned through the frozen language
    model (`align_trains="oracle"`); or the language model (or the merger) trained on scene descriptions."""
    config = StackConfig.from_stage(stage_config)
    tower = TOWER_STAGES[config.tower_stage()[0]]
    _train_language(config, build_stage(tower, stage_config["previous"]), folder, "align")


def build_instruct(stage_config: dict[str, Any], folder: Path) -> None:
    """Stage 3: multi-turn questions about named objects, counting, and the output format."""
    config = StackConfig.from_stage(stage_config)
    _train_language(config, build_stage(ALIGN, stage_config["previous"]), folder, "instruct")


# Versions: text 2, align 4, instruct 3 — the language-model loss applies the head at the answers only
# (`answer_loss`; the same loss, summed in another order, so a rebuilt stage differs in rounding).
TEXT: Stage[dict[str, Any]] = Stage("vlm-text", 2, build_text, BUILD_COMMAND, resumable=True)
REASON: Stage[dict[str, Any]] = Stage("vlm-reason", 1, build_reasoning, BUILD_COMMAND, resumable=True)
VISION: Stage[dict[str, Any]] = Stage("vlm-vision", 1, build_vision, BUILD_COMMAND, resumable=True)
VISION_FINAL: Stage[dict[str, Any]] = Stage(
    "vlm-vision-final", 1, build_vision_final, BUILD_COMMAND, resumable=True
)
ALIGN: Stage[dict[str, Any]] = Stage("vlm-align", 4, build_align, BUILD_COMMAND, resumable=True)
INSTRUCT: Stage[dict[str, Any]] = Stage("vlm-instruct", 3, build_instruct, BUILD_COMMAND, resumable=True)
"""Each stage is built in `<key>.partial` under a lock; its training loops checkpoint every few minutes, so
a build that is interrupted (Ctrl-C, a killed process) continues from its last checkpoint when it is run
again, to the same weights (`segcompass.loop_checkpoints`)."""


LANGUAGE_STAGES: dict[str, Stage[dict[str, Any]]] = {TEXT.name: TEXT, REASON.name: REASON}
"""The stages whose language model stage 2 can adopt, by the name `StackConfig.language_stage` gives."""

COMMITTABLE = {s.name: (s, dict) for s in (TEXT, REASON, VISION, VISION_FINAL, ALIGN, INSTRUCT)}
"""The stages `segcompass pretrain --reproduce` rebuilds, with their config from a `stage.json` (a dict)."""

TOWER_STAGES: dict[str, Stage[dict[str, Any]]] = {VISION.name: VISION, VISION_FINAL.name: VISION_FINAL}
"""The stages whose tower stage 2 can start from, by the name `StackConfig.tower_stage` gives."""


def build_stack(config: StackConfig | None = None, cache_root: str | os.PathLike | None = None) -> Path:
    """Build every stage that is missing (saying so) and return the instruction-tuned folder."""
    config = config or StackConfig()
    return build_stage(INSTRUCT, config.instruct_stage(), cache_root)


def stack_folder(config: StackConfig | None = None, cache_root: str | os.PathLike | None = None) -> Path:
    """The built instruction-tuned folder; `StageMissing` naming `segcompass pretrain` when it is not."""
    config = config or StackConfig()
    return stage_folder(INSTRUCT, config.instruct_stage(), cache_root)
