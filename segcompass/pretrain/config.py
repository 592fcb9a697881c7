"""`StackConfig`: everything that decides the staged tiny VLM, and each stage's part of it.

Each stage's config holds the fields that stage reads, and nests the configs of the stages it starts from,
so a change early on gives every later stage a new key, and nothing before it (`segcompass.stages`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from segcompass.backbones.family import TinySpec
from segcompass.world.config import WorldConfig
from segcompass.world.language import LISTING_ORDERS

from .grounding import Grounding, every_head_of_layers_2_3
from .object_phase import ObjectPhase
from .optim import Schedule
from .text import FORMAT_KINDS, LOOKUP_KINDS, RecallPhase
from .tower_tuning import TowerTuning
from .vision import VisionObjective

IMAGE_PIXELS = (280 * 280, 288 * 288)
"""(min, max) pixels of the stack's processor: ≥ 8 × 8 image tokens for every image of the world
(aspect ≤ 1.6), about 10 × 10 for a square one."""


ALIGN_TRAINS: tuple[str, ...] = ("language", "merger", "oracle")
"""What stage 2 can train (`StackConfig.align_trains`)."""


def _default_tiny() -> dict[str, Any]:
    # Full attention in every vision block: windowed attention loops in Python per window on CPU.
    # A vision tower twice the preset's width: shape comes ≈ 2× faster per step (results/warmup.md).
    return {
        "image_size": 288,
        "min_pixels": IMAGE_PIXELS[0],
        "vision_hidden_size": 128,
        "extra": {"vision_config": {"fullatt_block_indexes": [0, 1, 2, 3]}},
    }


def _object_recall_phase() -> ObjectPhase:
    return ObjectPhase(
        schedule=Schedule(steps=2000, batch_size=128, lr=2e-3),
        layout="objects",
        objects=(2, 7),
    )


def _object_image_phase() -> ObjectPhase:
    return ObjectPhase(
        schedule=Schedule(steps=3200, batch_size=32, lr=1e-3),
        layout="image",
        questions=3,
        kinds=(*LOOKUP_KINDS, "count"),
    )


def _reasoning_phase() -> ObjectPhase:
    return ObjectPhase(
        schedule=Schedule(steps=6400, batch_size=32, lr=1e-3),
        layout="image",
        questions=3,
        kinds=(*LOOKUP_KINDS, "count", "grounded_format"),
    )


@dataclass
class StackConfig:
    """Everything that decides the staged tiny VLM (`segcompass pretrain` builds the defaults)."""

    family: str = "qwen2_5_vl"
    """Backbone family of the tiny preset (multi-turn dialogues are written for `qwen2_5_vl`)."""
    seed: int = 0
    """Seeds the init, the batch order and the dialogues."""
    tiny: dict[str, Any] = field(default_factory=_default_tiny)
    """`TinySpec` overrides of the preset (its processor decides the image-token grid)."""
    world: dict[str, Any] = field(default_factory=dict)
    """`WorldConfig` overrides (default: the default world)."""
    train_scenes: int = 6000
    """Training scenes with images (world split "train", samples 0 … n − 1), shared by stages 1–3."""
    text_scenes: int = 4000
    """Scenes whose words make stage 0's dialogues (world split "train", samples 0 … n − 1; no images)."""
    val_scenes: int = 300
    """Held-out scenes (world split "val") for every stage's figures."""
    num_slots: int = 4
    """K: `<REF_POS>` tokens after `</think>` in the format turns."""
    vision_pixels: int = 224 * 224
    """Stage 1 trains the tower at this many pixels per image (≈ 8 × 8 tokens; cheaper than the final
    ≈ 10 × 10; the rotary tower carries over to the final size)."""
    object_recall: ObjectPhase = field(default_factory=_object_recall_phase)
    """Stage 0's first phase (0 steps: none): short scenes as object vectors, one token per object, look-up
    questions with attention grounding (`object_phase.py`). 2000 steps of 128: the answers follow the named
    object on whole scenes (results/warmup.md, session (4))."""
    object_image: ObjectPhase = field(default_factory=_object_image_phase)
    """Stage 0's second phase (0 steps: none): the train scenes' oracle image tokens (each token its covering
    object's vector) on the image grid, look-up questions with attention grounding. 3200 steps of 32: after
    1200, 2000 more took the oracle-token answers from colour 0.80 / shape 0.77 to 0.99 / 0.94
    (results/warmup.md, session (6))."""
    reasoning: ObjectPhase = field(default_factory=_reasoning_phase)
    """Stage 0b, its own cached stage after stage 0 (0 steps: none, stage 2 starts from stage 0): the oracle
    image tokens again, with the grounded format turn (the instruction → its reasoning) among the look-up
    turns, and optionally a share of sequences in words (`ObjectPhase.words`). 6400 steps of 32: on the
    val scenes' oracle tokens the reasoning reaches 0.60 and its opening 0.90 (1600 / 3200 steps: 0.35 / 0.49
    and 0.18 / 0.67), the look-up kept; on images after stage 3 the reasoning 0.35 / 0.36 → 0.46 / 0.46
    on two seeds each (results/warmup.md, sessions (10)–(11), (14)–(15))."""
    recall: RecallPhase = field(default_factory=RecallPhase)
    """Stage 0's phase in words after the object phases: short scenes, look-up questions, large batches (0
    steps: none)."""
    text: Schedule = field(default_factory=lambda: Schedule(steps=0, batch_size=32, lr=2e-3))
    """Stage 0's phase in words, last (language model on text dialogues: the scene in words, then questions;
    0 steps: none — the object phases teach the look-up the image stages use, results/warmup.md)."""
    vision: Schedule = field(default_factory=lambda: Schedule(steps=10000, batch_size=16, lr=3e-3))
    """Stage 1 optimiser (vision tower + merger + read-out heads). The tokens' shape keeps rising with steps
    (results/warmup.md, session (5)): the one long, one-time stage of the stack."""
    vision_objective: VisionObjective = field(default_factory=VisionObjective)
    """Stage 1 objective weights."""
    vision_final: Schedule = field(
        default_factory=lambda: Schedule(steps=4000, batch_size=16, lr=1e-3, warmup_fraction=0.02)
    )
    """Stage 1b, its own cached stage after stage 1 (0 steps: none, stage 2 starts from stage 1): the tower
    + merger trained on stage 1's objective again at the final size (`IMAGE_PIXELS`, ≈ 10 × 10 tokens rather
    than stage 1's ≈ 8 × 8), as vision encoders end their pretraining with a short phase at the resolution
    they will be used at. 4000 steps of 16: each merged token carries its object's shape at 0.79 (2000
    steps: 0.77; stage 1: 0.64 at the final size; results/warmup.md, sessions (10)–(11))."""
    vision_final_objective: VisionObjective | None = None
    """Stage 1b's objective weights; None: stage 1's (`vision_objective`). E.g. with
    `VisionObjective.token_count_weight` on, stage 1b adds a per-token count target to what stage 1 trained:
    the tower's pooled tokens carry the counts (a per-colour linear probe reads them at 0.86), the named
    colour's own tokens do not (a probe of them reads at the majority rate), and the count questions look
    those up (results/warmup.md, session (14))."""
    align: Schedule = field(default_factory=lambda: Schedule(steps=200, batch_size=16, lr=2e-3))
    """Stage 2 optimiser (scene descriptions; the tower frozen)."""
    align_trains: str = "oracle"
    """What stage 2 trains: "language" (the language model) or "merger" (the merger alone, the language
    model frozen — LLaVA's first stage: the image tokens learn to look like what stage 0's model reads), or
    "oracle" (no steps: the merger's last layer is fitted by ridge regression so that the image tokens equal
    the oracle tokens stage 0's object phases trained on — `align.py`)."""
    tower_tuning: TowerTuning = field(default_factory=TowerTuning)
    """Stage 2, after the merger fit (`align_trains="oracle"` only): the tower and merger tuned through the
    frozen language model on questions about the train scenes, with a regression to the oracle tokens
    (`tower_tuning.py`; 0 steps: the fit alone). Off: from the fit, 600 steps take the held-out answers on
    images from colour 0.52 / shape 0.32 / position 0.28 to 0.73 / 0.40 / 0.43, but with stage 3 after 1000
    steps of it (39 min) the stack ends where it ends without (colour 0.70 vs 0.69, shape 0.53 vs 0.55,
    hook-layer shape probe 0.49 vs 0.54): the two close the same gap (results/warmup.md, session (8))."""
    instruct: Schedule = field(default_factory=lambda: Schedule(steps=2000, batch_size=32, lr=5e-4))
    """Stage 3 optimiser (language model on multi-turn questions + the output format; vision frozen). A low
    learning rate: at 1e-3 on weak tokens the answers stopped following the named object (results/warmup.md,
    session (5)). 2000 steps of 32: on two seeds each, position 0.68 / 0.65 → 0.72 / 0.72, shape 0.69 / 0.67 →
    0.71 / 0.71 and the reasoning's opening 0.73 / 0.72 → 0.81 / 0.83 over 1000 (results/warmup.md, session
    (12))."""
    questions_per_dialogue: int = 6
    """Question turns per instruction-tuning sequence."""
    format_probability: float = 0.6
    """Probability that an instruction-tuning sequence has the output-format turn."""
    format_first: float = 0.5
    """Stage 3: of the sequences with a format turn, the share where it is the first turn (the instruction
    as the first prompt with the image, as segmentation asks it) rather than the last. With the format only
    last, a stage 0 without its phase in words never wrote the format as a first answer (format 0.025,
    results/warmup.md)."""
    slot_grounding: bool = False
    """Stage 3: the format turn's `<REF_POS>` tokens are grounded on the instruction's targets (the grounding
    objective at each token's own position: the state the head reads as e_k attends to its target's image
    tokens; `dialogue.slot_grounded_format_turn`), the stand-in for referring-expression grounding data. Off:
    at 1000 steps (one seed) it moved what e_0 names only from colour 0.46 / shape 0.30 to 0.51 / 0.31, and
    the reasoning from 0.34 to 0.38 (results/warmup.md, session (12))."""
    count_listing: bool = False
    """Stage 3: count questions are answered by listing the objects counted, then the number ("Circles: the
    small red circle at the top left and … So 2."; `dialogue.listed_count_turn`, each listed phrase grounded
    on its object). The stand-in for counting by enumeration: on the default stack the direct count fails
    from three objects on, on oracle tokens too (0.41; results/warmup.md, session (13))."""
    reasoning_order: str = "paint"
    """Stages 0b and 3: the order in which the format turn's reasoning lists several objects
    (`world.language.LISTING_ORDERS`): "paint", as the world's data writes it (the order the objects were
    painted in, which the image shows only where they overlap: in 45 % of single-target instructions the
    listing differs from reading order), or "reading", the rows of the 3 × 3 grid top to bottom, then left to
    right, as the descriptions and `count_listing` list. Stage 0's format turns in words keep the world's
    order (its key is unchanged)."""
    grounding: Grounding = field(default_factory=every_head_of_layers_2_3)
    """Stage 3 attention grounding: answers about a named object attend to its image tokens (every head of
    layers 2–3, as in stage 0's object phases)."""

    def __post_init__(self) -> None:
        if isinstance(self.text, dict):
            self.text = Schedule(**self.text)
        if isinstance(self.recall, dict):
            self.recall = RecallPhase(**self.recall)
        for name, layout in (("object_recall", "objects"), ("object_image", "image"), ("reasoning", "image")):
            phase = getattr(self, name)
            if isinstance(phase, dict):
                phase = ObjectPhase(**phase)
                setattr(self, name, phase)
            if phase.layout != layout:
                raise ValueError(f"{name} must have layout {layout!r}, got {phase.layout!r}")
        if isinstance(self.vision, dict):
            self.vision = Schedule(**self.vision)
        if isinstance(self.vision_final, dict):
            self.vision_final = Schedule(**self.vision_final)
        if isinstance(self.vision_final_objective, dict):
            self.vision_final_objective = VisionObjective(**self.vision_final_objective)
        if isinstance(self.align, dict):
            self.align = Schedule(**self.align)
        if isinstance(self.instruct, dict):
            self.instruct = Schedule(**self.instruct)
        if isinstance(self.grounding, dict):
            self.grounding = Grounding(**self.grounding)
        if isinstance(self.tower_tuning, dict):
            self.tower_tuning = TowerTuning(**self.tower_tuning)
        if self.tower_tuning.schedule.steps > 0 and self.align_trains != "oracle":
            raise ValueError('tower_tuning follows the merger fit: it needs align_trains="oracle"')
        if isinstance(self.vision_objective, dict):
            self.vision_objective = VisionObjective(**self.vision_objective)
        if set(FORMAT_KINDS) & set(self.recall.kinds):
            raise ValueError('the recall phase asks about short scenes: its kinds cannot include "format"')
        if self.align_trains not in ALIGN_TRAINS:
            raise ValueError(f"align_trains must be one of {ALIGN_TRAINS}, got {self.align_trains!r}")
        if self.reasoning_order not in LISTING_ORDERS:
            raise ValueError(f"reasoning_order must be one of {LISTING_ORDERS}, got {self.reasoning_order!r}")
        if not 0.0 <= self.format_first <= 1.0:
            raise ValueError(f"format_first must be in [0, 1], got {self.format_first}")
        if min(self.num_slots, self.train_scenes, self.val_scenes, self.text_scenes) < 1:
            raise ValueError("need num_slots, train_scenes, text_scenes and val_scenes >= 1")
        TinySpec(**self.tiny)
        WorldConfig(**self.world)

    # ---- the stages' configs (each nests the ones it starts from) ----------------------------------
    def text_stage(self) -> dict[str, Any]:
        keys = (
            "family",
            "seed",
            "tiny",
            "world",
            "text_scenes",
            "text",
            "questions_per_dialogue",
            "format_probability",
            "num_slots",
        )
        stage = {k: _plain(getattr(self, k)) for k in keys}
        # A phase with 0 steps stays out of the key: stage 0 keeps the key it had before the phase existed.
        for name in _STAGE_0_PHASES:
            if getattr(self, name).schedule.steps > 0:
                stage[name] = _part_key(getattr(self, name))
        if "object_image" in stage:  # the image layout asks about the train scenes (their oracle tokens)
            stage["train_scenes"] = self.train_scenes
        return stage

    def reasoning_stage(self) -> dict[str, Any]:
        """Stage 0b: starts from stage 0's language model (only built when `reasoning` has steps)."""
        stage = {
            "previous": self.text_stage(),
            "reasoning": _part_key(self.reasoning),
            "train_scenes": self.train_scenes,
        }
        if self.reasoning_order != "paint":  # the world's order keeps the key stage 0b had before the field
            stage["reasoning_order"] = self.reasoning_order
        return stage

    def language_stage(self) -> tuple[str, dict[str, Any]]:
        """(stage name, config) of the language model stage 2 adopts: stage 0b when it has steps, else 0."""
        if self.reasoning.schedule.steps > 0:
            return "vlm-reason", self.reasoning_stage()
        return "vlm-text", self.text_stage()

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
        stage = {k: _plain(getattr(self, k)) for k in keys}
        stage["vision_objective"] = _part_key(self.vision_objective)
        return stage

    def vision_final_stage(self) -> dict[str, Any]:
        """Stage 1b: starts from stage 1's tower (only built when `vision_final` has steps)."""
        stage = {"previous": self.vision_stage(), "vision_final": asdict(self.vision_final)}
        if self.vision_final_objective is not None:  # None (stage 1's) keeps the key stage 1b had before
            stage["vision_final_objective"] = _part_key(self.vision_final_objective)
        return stage

    def final_vision_objective(self) -> VisionObjective:
        """The objective stage 1b trains: `vision_final_objective`, or stage 1's when that is None."""
        return self.vision_final_objective or self.vision_objective

    def tower_stage(self) -> tuple[str, dict[str, Any]]:
        """(stage name, config) of the tower stage 2 starts from: stage 1b when it has steps, else 1."""
        if self.vision_final.steps > 0:
            return "vlm-vision-final", self.vision_final_stage()
        return "vlm-vision", self.vision_stage()

    def align_stage(self) -> dict[str, Any]:
        """Starts from stage 1's vision tower (1b's when it has steps) and stage 0's language model (0b's
        when it has steps)."""
        stage = {
            "previous": self.tower_stage()[1],
            "language": self.language_stage()[1],
            "align": asdict(self.align),
            "align_trains": self.align_trains,
        }
        if self.tower_tuning.schedule.steps > 0:  # 0 steps keeps the key stage 2 had before the field
            stage["tower_tuning"] = asdict(self.tower_tuning)
        return stage

    def instruct_stage(self) -> dict[str, Any]:
        keys = ("instruct", "questions_per_dialogue", "format_probability", "num_slots", "grounding")
        stage = {"previous": self.align_stage(), **{k: _plain(getattr(self, k)) for k in keys}}
        if self.format_first > 0:  # 0 (the format turn last, as before the field existed) keeps the old key
            stage["format_first"] = self.format_first
        if self.slot_grounding:  # off keeps the key stage 3 had before the field
            stage["slot_grounding"] = True
        if self.count_listing:  # off keeps the key stage 3 had before the field
            stage["count_listing"] = True
        if self.reasoning_order != "paint":  # the world's order keeps the key stage 3 had before the field
            stage["reasoning_order"] = self.reasoning_order
        return stage

    def tiny_spec(self) -> TinySpec:
        """The preset's `TinySpec` with `tiny` applied."""
        return TinySpec(**self.tiny)

    @classmethod
    def from_stage(cls, stage_config: dict[str, Any]) -> StackConfig:
        """The stack config a stage config was made from (fields no stage so far reads keep defaults).

        A field that a stage's key leaves out when it is off (stage 0's phases with 0 steps, stage 0b's
        `reasoning` and stage 1b's `vision_final` with 0 steps, stage 2's `tower_tuning` with 0 steps, stage
        3's `format_first` at 0) is off again here, whatever its default."""
        flat: dict[str, Any] = {}
        nodes = [stage_config]
        while nodes:
            node = nodes.pop()
            flat.update({k: v for k, v in node.items() if k not in _NESTED})
            nodes += [node[k] for k in _NESTED if k in node]
        if "align_trains" in flat and "tower_tuning" not in flat:  # stage 2's config: its tuning is off
            tuning = TowerTuning()
            flat["tower_tuning"] = replace(tuning, schedule=replace(tuning.schedule, steps=0))
        config = cls(**flat)
        if "text_scenes" in flat:  # stage 0's config is in this one
            for name in _STAGE_0_PHASES:
                if name not in flat:
                    phase = getattr(config, name)
                    setattr(config, name, replace(phase, schedule=replace(phase.schedule, steps=0)))
        if "text_scenes" in flat and "reasoning" not in flat:  # no stage 0b in this chain
            config.reasoning = replace(config.reasoning, schedule=replace(config.reasoning.schedule, steps=0))
        if "vision_pixels" in flat and "vision_final" not in flat:  # no stage 1b in this chain
            config.vision_final = replace(config.vision_final, steps=0)
        if "instruct" in flat and "format_first" not in flat:
            config.format_first = 0.0
        return config


_STAGE_0_PHASES = ("object_recall", "object_image", "recall")
"""Stage 0's optional phases: in its key only when they have steps."""

_NESTED = ("previous", "language")
"""Keys of a stage config that hold the config of a stage it starts from."""


_FIELDS_OFF = {"loss_per": "token", "words": 0.0, "token_count_weight": 0.0}
"""Fields of the stages' nested configs (object phases, vision objectives) added after those stages were
committed, at the values that keep their keys."""


def _part_key(part: Any) -> dict[str, Any]:
    """A nested config's part of a stage key: its fields, less those of `_FIELDS_OFF` at their off value
    (the key the stage had before the fields existed)."""
    return {k: v for k, v in asdict(part).items() if not (k in _FIELDS_OFF and v == _FIELDS_OFF[k])}


def _plain(value: Any) -> Any:
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value
