"""Multi-turn dialogues about one image: the data of the alignment and instruction-tuning stages.

One sequence holds many question–answer turns about the same image, so the image is paid once. Turns:

- ``describe``: "Describe the image." → the scene description (alignment);
- ``colour`` / ``shape`` / ``size`` / ``position`` / ``count``: a question about a named object (named by
  the shortest unique phrase) or a count of a colour / a kind;
- a ``count`` may be answered by listing what it counts first ("Circles: the small red circle at the top left
  and the large blue circle at the centre. So 2."; `listed_count_turn`);
- ``format``: the scene's instruction → ``<think>{reasoning}</think>`` + K ``<REF_POS>``; the world's
  reasoning resolves the referent from the scene (it lists the candidates and ends with "So the target is
  the {size} {colour} {shape} at {position}"), so writing it needs the image, not only the instruction.

Labels cover every assistant turn (answer + end-of-turn token) and nothing else.

A dialogue may carry a text `context` in place of the image (`scene_text`: the scene's objects in words):
stage 0 trains the language model on such dialogues, the stand-in for the text pretraining a real MLLM's
language model brings — reading a named object's attributes out of its context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from segcompass.backbones import REASONING_TOKENS, Backbone
from segcompass.warmup.tasks import DESCRIBE_PROMPT, POSITIONS, format_response, question_example
from segcompass.world.language import describe_objects, location_words, object_listing, reading_order
from segcompass.world.scene import WorldSample
from segcompass.world.vocab import COLOURS, SHAPE_PLURALS, SHAPES, SIZES

THINK_END, REF_POS = REASONING_TOKENS[1], REASONING_TOKENS[2]
"""`</think>` and the concentration token `<REF_POS>` as they appear in a format answer."""

IGNORE_INDEX = -100
QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "size", "position", "count")
"""Kinds of question turn."""
SIZE_ANSWERS: tuple[str, ...] = tuple(SIZES)
_OBJECT_PHRASE = re.compile(
    rf"the ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) at the "
    rf"({'|'.join(sorted(POSITIONS, key=len, reverse=True))})"
)
"""`world.language.object_phrase`'s words: size, colour, shape, 3 × 3 position (longest position first)."""


@dataclass(frozen=True)
class Turn:
    """One user question and the assistant's answer (without the end-of-turn token)."""

    kind: str
    """`describe`, `format` or one of `QUESTION_KINDS`."""
    question: str
    answer: str
    candidates: tuple[str, ...] = ()
    """For questions: every answer the question admits."""
    target: int | None = None
    """For a question about one named object: its index in the scene's objects (what the grounding
    objective asks the answer to attend to); None otherwise."""
    mentions: tuple[tuple[int, int, int], ...] = ()
    """Objects the answer names, as (first char, end char, object index) in `answer`: the grounding objective
    asks every token of the span to be predicted attending to that object (`grounded_format_turn`)."""
    slot_reads: tuple[tuple[int, int, int], ...] = ()
    """Concentration tokens of the answer, as (first char, end char, object index) in `answer`: the grounding
    objective asks the state *at* each such token (e_k, what the head reads) to attend to that object
    (`slot_grounded_format_turn`)."""


@dataclass(frozen=True)
class Dialogue:
    """Turns about the image of pool scene `scene`."""

    scene: int
    """Index into the pool."""
    turns: tuple[Turn, ...]
    context: str | None = None
    """Text in the image's place (the first prompt holds it instead of the image's tokens); None: the
    image."""


def scene_text(sample: WorldSample) -> str:
    """The scene in words for a text-only dialogue: "Objects: a large red circle at the top left, …"."""
    scene = sample.scene
    return f"Objects: {describe_objects(scene.objects, scene.width, scene.height)}."


def size_question(sample: WorldSample, rng: np.random.Generator) -> Turn | None:
    """ "What size is the {colour shape}?" for an object its colour and shape name uniquely."""
    objects = sample.scene.objects
    unique = [
        i
        for i, o in enumerate(objects)
        if sum(p.colour == o.colour and p.shape == o.shape for p in objects) == 1
    ]
    if not unique:
        return None
    index = unique[int(rng.integers(len(unique)))]
    obj = objects[index]
    question = f"What size is the {obj.colour} {obj.shape}?"
    return Turn("size", question, obj.size_name, SIZE_ANSWERS, index)


def question_turn(
    sample: WorldSample,
    kind: str,
    rng: np.random.Generator,
    max_count: int = 8,
    with_size: bool = False,
) -> Turn | None:
    """A question of `kind` about `sample`, or None when no object can be named for it. `with_size`: colour,
    shape and position questions name the object with its size too (size questions name it by colour and
    shape, counts name no object)."""
    if kind == "size":
        return size_question(sample, rng)
    example = question_example(sample, kind, rng, max_count, with_size)
    if example is None:
        return None
    return Turn(kind, example.prompt, example.response, example.candidates, example.target)


def format_turn(sample: WorldSample, num_slots: int) -> Turn:
    """The scene's instruction → its reasoning in think tags + `num_slots` concentration tokens."""
    return Turn("format", sample.instruction, format_response(sample.reasoning, num_slots))


def reasoning_mentions(answer: str, sample: WorldSample) -> tuple[tuple[int, int, int], ...]:
    """Every "the {size} {colour} {shape} at the {position}" phrase of `answer` that names exactly one object of
    the scene, as (char start of the size word, end of the phrase, object index)."""
    scene = sample.scene
    found = []
    for match in _OBJECT_PHRASE.finditer(answer):
        size, colour, shape, where = match.groups()
        named = [
            i
            for i, o in enumerate(scene.objects)
            if (o.size_name, o.colour, o.shape) == (size, colour, shape)
            and location_words(o, scene.width, scene.height) == where
        ]
        if len(named) == 1:
            found.append((match.start(1), match.end(), named[0]))
    return tuple(found)


def grounded_format_turn(sample: WorldSample, num_slots: int) -> Turn:
    """`format_turn` whose reasoning's object phrases are grounded (`Turn.mentions`): writing "the large
    orange diamond at the centre" attends to that object's image tokens — the tiny model's stand-in for the
    grounded captions real MLLMs train on (phrases paired with their boxes)."""
    turn = format_turn(sample, num_slots)
    return Turn(turn.kind, turn.question, turn.answer, mentions=reasoning_mentions(turn.answer, sample))


def slot_grounded_format_turn(sample: WorldSample, num_slots: int) -> Turn:
    """`format_turn` whose `<REF_POS>` tokens read the instruction's targets (`Turn.slot_reads`): the state at
    the k-th one attends to target k mod n (targets in the scene's order), none for a no-target instruction.
    The stand-in for the referring-expression grounding data real MLLMs train on (Qwen2.5-VL answers a
    RefCOCO query with the referent's box), meant to make the states the head reads as e_k carry the referent
    (at 1000 steps they barely came to: results/warmup.md, session (12))."""
    turn = format_turn(sample, num_slots)
    targets = sorted(sample.target_ids)
    reads = []
    if targets:
        start = turn.answer.index(THINK_END) + len(THINK_END)
        for k in range(num_slots):
            first = start + k * len(REF_POS)
            if turn.answer[first : first + len(REF_POS)] != REF_POS:
                raise ValueError(
                    f"format answer without {num_slots} {REF_POS} after {THINK_END}: {turn.answer!r}"
                )
            reads.append((first, first + len(REF_POS), targets[k % len(targets)]))
    return Turn(turn.kind, turn.question, turn.answer, slot_reads=tuple(reads))


_COUNTED = re.compile(r"^How many (?:(\w+) shapes|(\w+)) are there\?$")
"""A count question's noun: "{colour} shapes" or a kind's plural."""
_SINGULAR = {plural: shape for shape, plural in SHAPE_PLURALS.items()}


def listed_count_turn(sample: WorldSample, rng: np.random.Generator, max_count: int = 8) -> Turn:
    """The count question `question_turn(sample, "count", rng)` draws, answered by listing the objects it
    counts in reading order and then the number: "Circles: the small red circle at the top left and the large
    blue circle at the centre. So 2." ("Red shapes: none. So 0."). Each listed phrase that names one object is
    grounded on it (`Turn.mentions`). Counting then rests on listing, which the reasoning trains, instead of
    on attention pooled over an object's several image tokens (results/warmup.md, session (13))."""
    turn = question_turn(sample, "count", rng, max_count)
    match = _COUNTED.match(turn.question) if turn is not None else None
    if match is None:
        raise ValueError(f"not a count question: {turn}")
    colour, plural = match.groups()
    by, value = ("colour", colour) if colour else ("shape", _SINGULAR[plural])
    scene = sample.scene
    counted = [
        i for i in reading_order(scene.objects, scene.height) if getattr(scene.objects[i], by) == value
    ]
    listing = object_listing(counted, scene.objects, scene.width, scene.height)
    noun = f"{colour} shapes" if colour else plural
    answer = f"{noun[0].upper()}{noun[1:]}: {listing}. So {len(counted)}."
    return Turn("count", turn.question, answer, mentions=reasoning_mentions(answer, sample))


def describe_turn(sample: WorldSample) -> Turn:
    """ "Describe the image." → the scene description."""
    return Turn("describe", DESCRIBE_PROMPT, sample.description)


def qa_dialogue(
    scene: int,
    sample: WorldSample,
    rng: np.random.Generator,
    num_questions: int,
    format_probability: float,
    num_slots: int,
    format_first: float = 0.0,
    ground_slots: bool = False,
    list_counts: bool = False,
) -> Dialogue:
    """`num_questions` questions of random kinds (each kind at most twice), then, with
    `format_probability`, the format turn: first with probability `format_first` (the instruction as the
    first prompt with the image, as segmentation asks it), last otherwise. `ground_slots`: the format turn's
    `<REF_POS>` tokens read the targets (`slot_grounded_format_turn`); `list_counts`: counts are answered by
    listing (`listed_count_turn`); the same draws either way."""
    turns: list[Turn] = []
    for kind in rng.permutation(np.repeat(QUESTION_KINDS, 2))[: num_questions * 2]:
        if len(turns) == num_questions:
            break
        listed = list_counts and kind == "count"
        turn = listed_count_turn(sample, rng) if listed else question_turn(sample, str(kind), rng)
        if turn is not None and all(t.question != turn.question for t in turns):
            turns.append(turn)
    if rng.random() < format_probability:
        # The draw for the place happens only when it can matter: `format_first=0` keeps the batches as before.
        first = format_first > 0 and rng.random() < format_first
        make = slot_grounded_format_turn if ground_slots else format_turn
        turns.insert(0 if first else len(turns), make(sample, num_slots))
    return Dialogue(scene, tuple(turns))


def check_family(backbone: Backbone) -> None:
    if backbone.family.name != "qwen2_5_vl":
        raise NotImplementedError(
            f"multi-turn dialogues are written in Qwen2.5-VL's chat format; family {backbone.family.name!r} "
            "has no multi-turn template here"
        )


def continuation(backbone: Backbone, turns: tuple[Turn, ...]) -> str:
    """The text after the first prompt: answer 1, then each further turn in the chat format."""
    eot = backbone.tokenizer.eos_token  # <|im_end|>
    text = turns[0].answer + eot
    for turn in turns[1:]:
        text += f"\n<|im_start|>user\n{turn.question}{eot}\n<|im_start|>assistant\n{turn.answer}{eot}"
    return text


def assistant_labels(backbone: Backbone, input_ids: torch.Tensor) -> torch.Tensor:
    """int64 [B, T]: the input id at every position inside an assistant turn (from the token after
    "<|im_start|>assistant\\n" up to and including the next end-of-turn token), −100 elsewhere."""
    check_family(backbone)
    header = backbone.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    eot = backbone.tokenizer.convert_tokens_to_ids(backbone.tokenizer.eos_token)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    n = len(header)
    for b, row in enumerate(input_ids.tolist()):
        inside = False
        for t in range(len(row)):
            if inside:
                labels[b, t] = row[t]
                if row[t] == eot:
                    inside = False
            elif t >= n - 1 and row[t - n + 1 : t + 1] == header:
                inside = True
    return labels
