"""Stage 0's object-vector phases: the language model learns the look-up on scenes given as object vectors.

A tower that sees gives each image token its object's colour, shape, size and place together, so a question
about a named object is one hop: attend to the tokens that match the name, read the asked attribute. Stage
0's scenes in words make that two hops (bind the colour to its shape, then look up), which the tiny language
model is slow to learn (results/warmup.md). The phases here give each object as one vector, the sum of its
words' embeddings (`object_vectors.py`), and train the look-up with the attention-grounding objective
(`grounding.py`: the answer attends to the named object's tokens):

- layout "objects": short scenes (a few of a train scene's objects), object j on token j of a 1 × n grid —
  the cheap phase in which the look-up forms (held out, whole scenes: colour 0.95, shape 0.90 after 2000
  steps of 128 with grounding on layers 2–3);
- layout "image": whole train scenes on their image's token grid, each token the vector of the object
  covering it and 0 on the background (the oracle tokens of an ideal tower) — several tokens per object,
  background between them, the image's 2-D rotary positions. From the phase above, 1200 steps of 32 take
  held-out oracle-token answers to colour 0.94, shape 0.91, size 0.98 (position 0.53, count 0.41).

Both draw their turns with `text.recall_turns` (the phase's kinds and question count).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segcompass.backbones import Backbone
from segcompass.world.scene import WorldSample

from .dialogue import Dialogue
from .grounding import Grounding, every_head_of_layers_2_3
from .language import LOSS_PER, train_dialogues
from .object_vectors import ObjectScene, ObjectVectorCache
from .optim import LoopRecord
from .pool import ScenePool
from .text import FORMAT_KINDS, RecallPhase, recall_turns, short_scene, text_dialogue

LAYOUTS: tuple[str, ...] = ("objects", "image")
"""Where an object phase puts the object vectors: one token each (1 × n), or on the image's token grid."""


@dataclass
class ObjectPhase(RecallPhase):
    """A stage-0 phase on scenes given as object vectors (the turn fields are `RecallPhase`'s; `objects`
    applies to the "objects" layout only: the "image" layout asks about whole scenes)."""

    layout: str = "objects"
    """"objects": short scenes, one token per object; "image": whole scenes on their image's token grid."""
    grounding: Grounding = field(default_factory=every_head_of_layers_2_3)
    """The answers to questions about a named object attend to its tokens (weight 0: off)."""
    short_scenes: int = 65536
    """Layout "objects": short scenes drawn once from the text scenes (the phase's pool)."""
    words: float = 0.0
    """Layout "image": the share of sequences that give the scene in words instead (the text in the image's
    place, `text.text_dialogue`: `questions` questions, then the format turn). Words before the image phase
    taught the reasoning's opening, which restates the instruction, but wiped the image look-up; mixed in
    at 0.25 or 0.5 they lowered both (results/warmup.md, session (9))."""
    loss_per: str = "token"
    """How the answers' cross-entropy is averaged (`language.answer_loss`): "token", every labelled token
    alike, so a format turn's ≈ 60-token reasoning outweighs the one-word answers beside it; or "turn",
    each turn's mean and then the turns', so every turn weighs the same."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.grounding, dict):
            self.grounding = Grounding(**self.grounding)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "objects" and set(FORMAT_KINDS) & set(self.kinds):
            raise ValueError(
                'the "objects" layout asks about short scenes: the "format" turn needs the "image" layout'
            )
        if not 0.0 <= self.words <= 1.0:
            raise ValueError(f"words must be in [0, 1], got {self.words}")
        if self.words > 0 and self.layout != "image":
            raise ValueError('words replace the image of whole scenes: they need the "image" layout')
        if self.loss_per not in LOSS_PER:
            raise ValueError(f"loss_per must be one of {LOSS_PER}, got {self.loss_per!r}")
        if self.short_scenes < 1:
            raise ValueError(f"short_scenes must be >= 1, got {self.short_scenes}")


def short_scene_pool(samples: list[WorldSample], phase: ObjectPhase, seed: int) -> list[ObjectScene]:
    """`phase.short_scenes` short scenes of `phase.objects` objects, each of a random one of `samples`."""
    if not samples:
        raise ValueError("the objects layout needs at least one text scene")
    rng = np.random.default_rng(seed)
    low, high = phase.objects
    return [
        ObjectScene.of(short_scene(samples[int(i)], int(rng.integers(low, high + 1)), rng))
        for i in rng.integers(len(samples), size=phase.short_scenes)
    ]


def train_object_phase(
    backbone: Backbone,
    phase: ObjectPhase,
    seed: int,
    samples: list[WorldSample] | None = None,
    images: ScenePool | None = None,
    progress: bool = True,
    num_slots: int = 4,
) -> LoopRecord:
    """Train the language model on `phase`: layout "objects" draws its short scenes from `samples` (scene
    graphs), layout "image" asks about the scenes of `images` (a pool labelled for the image grid); a
    "format" turn ends with `num_slots` `<REF_POS>` tokens."""
    if phase.layout == "objects":
        pool = short_scene_pool(samples or [], phase, seed + 3)
    elif images is None or len(images) == 0:
        raise ValueError("the image layout needs a pool of scenes labelled for the image grid")
    else:
        pool = images

    def make(scene: int, rng: np.random.Generator) -> Dialogue:
        # The draw happens only when it can matter: `words=0` keeps the batches as before the field.
        if phase.words > 0 and rng.random() < phase.words:
            return text_dialogue(scene, pool[scene].sample, rng, phase.questions, 1.0, num_slots)
        return Dialogue(scene, recall_turns(pool[scene].sample, rng, phase, num_slots))

    return train_dialogues(
        backbone,
        pool,
        ObjectVectorCache(backbone, pool),
        phase.schedule,
        make,
        seed,
        f"stage 0: object vectors ({phase.layout})",
        progress,
        grounding=phase.grounding,
        loss_per=phase.loss_per,
    )
