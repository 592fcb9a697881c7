"""The staged tiny VLM: vision pretraining → alignment → instruction tuning, each a cached stage.

Every stage writes a full backbone folder (`Backbone.save`), so each one loads through `load_backbone`
like a real checkpoint, plus `metrics.json` with its held-out figures. A stage's config nests the config
of the stage before it, so a change early on gives every later stage a new key, and nothing before it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segcompass.backbones import Backbone, build_tiny, load_backbone
from segcompass.backbones.family import TinySpec
from segcompass.stages import Stage, build_stage, stage_folder
from segcompass.world.config import WorldConfig

from .dialogue import Dialogue, describe_turn, qa_dialogue
from .grounding import Grounding
from .language import FeatureCache, train_dialogues
from .optim import Schedule, run_loop
from .pool import ScenePool, build_pool
from .probe import merged_tokens, token_probes
from .vision import (
    PixelCache,
    VisionHeads,
    VisionObjective,
    image_tokens,
    vision_batch,
    vision_loss,
)

logger = logging.getLogger(__name__)

BUILD_COMMAND = "segcompass pretrain"
"""The command that builds the stack's stages (named by `StageMissing`)."""
IMAGE_PIXELS = (280 * 280, 288 * 288)
"""(min, max) pixels of the stack's processor: ≥ 8 × 8 image tokens for every image of the world
(aspect ≤ 1.6), about 10 × 10 for a square one."""


def _default_tiny() -> dict[str, Any]:
    # Full attention in every vision block: windowed attention loops in Python per window on CPU.
    # A vision tower twice the preset's width: shape comes ≈ 2× faster per step (results/warmup.md).
    return {
        "image_size": 288,
        "min_pixels": IMAGE_PIXELS[0],
        "vision_hidden_size": 128,
        "extra": {"vision_config": {"fullatt_block_indexes": [0, 1, 2, 3]}},
    }


@dataclass
class StackConfig:
    """Everything that decides the staged tiny VLM (the defaults are `warm:qwen2_5_vl`)."""

    family: str = "qwen2_5_vl"
    """Backbone family of the tiny preset (multi-turn dialogues are written for `qwen2_5_vl`)."""
    seed: int = 0
    """Seeds the init, the batch order and the dialogues."""
    tiny: dict[str, Any] = field(default_factory=_default_tiny)
    """`TinySpec` overrides of the preset (its processor decides the image-token grid)."""
    world: dict[str, Any] = field(default_factory=dict)
    """`WorldConfig` overrides (default: the default world)."""
    train_scenes: int = 2000
    """Training scenes (world split "train", samples 0 … n − 1), shared by every stage."""
    val_scenes: int = 300
    """Held-out scenes (world split "val") for every stage's figures."""
    num_slots: int = 4
    """K: `<REF_POS>` tokens after `</think>` in the format turns."""
    vision_pixels: int = 224 * 224
    """Stage 1 trains the tower at this many pixels per image (≈ 8 × 8 tokens; cheaper than the final
    ≈ 10 × 10; the rotary tower carries over to the final size)."""
    vision: Schedule = field(default_factory=lambda: Schedule(steps=2000, batch_size=16, lr=3e-3))
    """Stage 1 optimiser (vision tower + merger + read-out heads)."""
    vision_objective: VisionObjective = field(default_factory=VisionObjective)
    """Stage 1 objective weights."""
    align: Schedule = field(default_factory=lambda: Schedule(steps=200, batch_size=16, lr=2e-3))
    """Stage 2 optimiser (language model on scene descriptions; vision frozen)."""
    instruct: Schedule = field(default_factory=lambda: Schedule(steps=1500, batch_size=16, lr=2e-3))
    """Stage 3 optimiser (language model on multi-turn questions + the output format; vision frozen)."""
    questions_per_dialogue: int = 6
    """Question turns per instruction-tuning sequence."""
    format_probability: float = 0.6
    """Probability that an instruction-tuning sequence ends with the output-format turn."""
    grounding: Grounding = field(default_factory=Grounding)
    """Stage 3 attention grounding: answers about a named object attend to its image tokens."""

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = Schedule(**self.vision)
        if isinstance(self.align, dict):
            self.align = Schedule(**self.align)
        if isinstance(self.instruct, dict):
            self.instruct = Schedule(**self.instruct)
        if isinstance(self.grounding, dict):
            self.grounding = Grounding(**self.grounding)
        if isinstance(self.vision_objective, dict):
            self.vision_objective = VisionObjective(**self.vision_objective)
        if self.num_slots < 1 or self.train_scenes < 1 or self.val_scenes < 1:
            raise ValueError("need num_slots, train_scenes and val_scenes >= 1")
        TinySpec(**self.tiny)
        WorldConfig(**self.world)

    # ---- the stages' configs (each nests the one before) -----------------------------------------
    def vision_stage(self) -> dict[str, Any]:
        keys = (
            "family",
            "seed",
            "tiny",
            "world",
            "train_scenes",
            "vision_pixels",
            "vision",
            "vision_objective",
        )
        return {k: _plain(getattr(self, k)) for k in keys}

    def align_stage(self) -> dict[str, Any]:
        return {"previous": self.vision_stage(), "align": asdict(self.align)}

    def instruct_stage(self) -> dict[str, Any]:
        keys = ("instruct", "questions_per_dialogue", "format_probability", "num_slots", "grounding")
        return {"previous": self.align_stage(), **{k: _plain(getattr(self, k)) for k in keys}}

    def tiny_spec(self) -> TinySpec:
        """The preset's `TinySpec` with `tiny` applied."""
        return TinySpec(**self.tiny)

    @classmethod
    def from_stage(cls, stage_config: dict[str, Any]) -> StackConfig:
        """The stack config a stage config was made from (fields no stage so far reads keep defaults)."""
        flat: dict[str, Any] = {}
        node: dict[str, Any] | None = stage_config
        while node is not None:
            flat.update({k: v for k, v in node.items() if k != "previous"})
            node = node.get("previous")
        return cls(**flat)


def _plain(value: Any) -> Any:
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


# ---- scene pools ---------------------------------------------------------------------------------
class ProcessorGrid:
    """(height, width) → merged image-token grid, as the Qwen2.5-VL image processor resizes."""

    def __init__(self, min_pixels: int, max_pixels: int, factor: int = 28) -> None:
        self.min_pixels, self.max_pixels, self.factor = min_pixels, max_pixels, factor

    @classmethod
    def of(cls, image_processor: Any) -> ProcessorGrid:
        """The grid of a Qwen2.5-VL image processor's current resize setting."""
        size = image_processor.size
        return cls(
            size.shortest_edge, size.longest_edge, image_processor.patch_size * image_processor.merge_size
        )

    def __call__(self, height: int, width: int) -> tuple[int, int]:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        h, w = smart_resize(
            height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return h // self.factor, w // self.factor


def set_image_pixels(backbone: Backbone, min_pixels: int, max_pixels: int) -> None:
    """Make a Qwen2.5-VL backbone's image processor resize to [min_pixels, max_pixels] pixels."""
    ip = backbone.processor.image_processor
    ip.size = type(ip.size)(shortest_edge=min_pixels, longest_edge=max_pixels)


@functools.lru_cache(maxsize=4)
def _pool(world_json: str, split: str, n: int, pixels: tuple[int, int]) -> ScenePool:
    grid = ProcessorGrid(*pixels)
    world = WorldConfig(**json.loads(world_json))
    return build_pool(world, split, n, grid, workers=min(2, os.cpu_count() or 1))


def scene_pool(config: StackConfig, split: str, pixels: tuple[int, int]) -> ScenePool:
    """The stack's train or val scenes labelled for the grid of `pixels` (built once per process)."""
    n = config.train_scenes if split == "train" else config.val_scenes
    return _pool(json.dumps(config.world, sort_keys=True), split, n, pixels)


def _vision_pixels(config: StackConfig) -> tuple[int, int]:
    return (config.vision_pixels - 28 * 28 * 2, config.vision_pixels)


def _save(backbone: Backbone, folder: Path, metrics: dict[str, Any]) -> None:
    backbone.save(folder)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float))


# ---- stage 1 -----------------------------------------------------------------------------------------
def build_vision(stage_config: dict[str, Any], folder: Path) -> None:
    """Stage 1: train the tower + merger on the vision objectives at `vision_pixels`; probe the merged
    tokens of held-out scenes (and of the same tower at random init)."""
    config = StackConfig.from_stage(stage_config)
    torch.manual_seed(config.seed)
    backbone = build_tiny(config.family, seed=config.seed, spec=config.tiny_spec())
    set_image_pixels(backbone, *_vision_pixels(config))
    train, val = (
        scene_pool(config, "train", _vision_pixels(config)),
        scene_pool(config, "val", _vision_pixels(config)),
    )
    probe_train = ScenePool("train", train.scenes[:500])
    control = token_probes(
        merged_tokens(backbone, probe_train), probe_train, merged_tokens(backbone, val), val
    )
    heads = VisionHeads(backbone.hidden_size)
    pixels = PixelCache(backbone, train)

    def step_loss(step: int, rng: np.random.Generator):
        picks = [int(i) for i in rng.choice(len(train), size=config.vision.batch_size, replace=False)]
        scenes = [train[i] for i in picks]
        tokens = image_tokens(backbone, scenes, pixels.batch(picks))
        loss = vision_loss(heads, tokens, vision_batch(scenes), config.vision_objective)
        return loss.total, loss.parts

    visual = backbone.model.model.visual
    record = run_loop([visual, heads], config.vision, step_loss, config.seed, "stage 1: vision")
    trained = token_probes(
        merged_tokens(backbone, probe_train), probe_train, merged_tokens(backbone, val), val
    )
    set_image_pixels(backbone, *IMAGE_PIXELS)
    metrics = {
        "wall_s": record.wall_s,
        "final_loss_parts": record.parts[-1] if record.parts else {},
        "merged_token_probes": {k: asdict(v) for k, v in trained.items()},
        "merged_token_probes_random_init": {k: asdict(v) for k, v in control.items()},
    }
    _save(backbone, folder, metrics)


# ---- stages 2 and 3 ------------------------------------------------------------------------------------
def _train_language(config: StackConfig, previous: Path, folder: Path, which: str) -> None:
    backbone = load_backbone(previous)
    set_image_pixels(backbone, *IMAGE_PIXELS)
    train = scene_pool(config, "train", IMAGE_PIXELS)
    cache = FeatureCache(backbone, train)
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
            )

    seed = config.seed * 7919 + (1 if which == "align" else 2)
    grounding = config.grounding if which == "instruct" else None
    record = train_dialogues(
        backbone, train, cache, schedule, make, seed, f"stage: {which}", grounding=grounding
    )
    _save(
        backbone,
        folder,
        {"wall_s": record.wall_s, "final_loss": record.losses[-1] if record.losses else None},
    )


def build_align(stage_config: dict[str, Any], folder: Path) -> None:
    """Stage 2: the language model learns to read the frozen image tokens on scene descriptions."""
    config = StackConfig.from_stage(stage_config)
    _train_language(config, build_stage(VISION, stage_config["previous"]), folder, "align")


def build_instruct(stage_config: dict[str, Any], folder: Path) -> None:
    """Stage 3: multi-turn questions about named objects, counting, and the output format."""
    config = StackConfig.from_stage(stage_config)
    _train_language(config, build_stage(ALIGN, stage_config["previous"]), folder, "instruct")


VISION: Stage[dict[str, Any]] = Stage("vlm-vision", 1, build_vision, BUILD_COMMAND)
ALIGN: Stage[dict[str, Any]] = Stage("vlm-align", 2, build_align, BUILD_COMMAND)
INSTRUCT: Stage[dict[str, Any]] = Stage("vlm-instruct", 2, build_instruct, BUILD_COMMAND)


def build_stack(config: StackConfig | None = None, cache_root: str | os.PathLike | None = None) -> Path:
    """Build every stage that is missing (saying so) and return the instruction-tuned folder."""
    config = config or StackConfig()
    return build_stage(INSTRUCT, config.instruct_stage(), cache_root)


def stack_folder(config: StackConfig | None = None, cache_root: str | os.PathLike | None = None) -> Path:
    """The built instruction-tuned folder; `StageMissing` naming `segcompass pretrain` when it is not."""
    config = config or StackConfig()
    return stage_folder(INSTRUCT, config.instruct_stage(), cache_root)
