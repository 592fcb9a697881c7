"""Warm-up examples built from world samples: chat prompt (image + text) → response.

Three tasks:

- ``describe``: "Describe the image." → the sample's scene description;
- ``qa``: attribute questions about one object, answered from the scene graph — its colour, its shape, its
  coarse 3 × 3 position, or how many shapes of a colour / kind there are;
- ``format``: the sample's instruction → ``<think>{reasoning}</think>`` + exactly K ``<REF_POS>``; by default
  the reasoning ends by restating the referring expression ("… Looking for the red circle."), so that the
  states of the `<REF_POS>` tokens that follow sit right after the words naming the referent.

The position question is worded "In which part of the image is the X?" rather than "Where is the X?",
because "Where is {np}?" is one of the world's instruction templates, whose answer is the output format.

Every builder takes a `numpy.random.Generator`, so examples are a pure function of (sample, rng state).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from segcompass.world.language import location_words, referring_expression
from segcompass.world.scene import SceneObject, WorldSample
from segcompass.world.vocab import COLOURS, SHAPE_PLURALS, SHAPES

from .referent import referent_labels

DESCRIBE_PROMPT = "Describe the image."
QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "position", "count")
"""Kinds of `qa` question."""
POSITIONS: tuple[str, ...] = tuple(
    " ".join(w for w in (r, c) if w) or "centre" for r in ("top", "", "bottom") for c in ("left", "", "right")
)
"""The nine coarse position answers ("top left", "top", ..., "centre", ..., "bottom right")."""


@dataclass(frozen=True)
class Example:
    """One supervised example; the loss covers `response` (and the end-of-turn token) only."""

    image: Image.Image
    """The scene's image."""
    prompt: str
    """The user's text (the image comes first in the chat prompt)."""
    response: str
    """The target answer, without the end-of-turn token."""
    task: str
    """``describe``, ``qa`` or ``format``."""
    question_type: str = ""
    """For ``qa``: one of `QUESTION_TYPES`."""
    candidates: tuple[str, ...] = ()
    """For ``qa``: every answer the question admits (the response is one of them)."""
    referent: tuple[int, ...] = ()
    """For ``format``: `referent.referent_labels` of the instruction (what the probe of e_k predicts)."""
    target: int | None = None
    """For ``qa`` about one named object: its index in the scene's objects (None for counts)."""


def format_response(reasoning: str, num_slots: int) -> str:
    """The SegCompass output format: ``<think>reasoning</think>`` then exactly `num_slots` ``<REF_POS>``."""
    return f"<think>{reasoning}</think>" + "<REF_POS>" * num_slots


def describe_example(sample: WorldSample) -> Example:
    """ "Describe the image." → the sample's description."""
    return Example(sample.image, DESCRIBE_PROMPT, sample.description, "describe")


def format_reasoning(sample: WorldSample, restate_target: bool = True) -> str:
    """The sample's reasoning, ending with "Looking for {referring expression}." when `restate_target`."""
    if not restate_target:
        return sample.reasoning
    return f"{sample.reasoning} Looking for {referring_expression(sample.instruction)}."


def format_example(sample: WorldSample, num_slots: int, restate_target: bool = True) -> Example:
    """The sample's instruction → reasoning in think tags + K concentration tokens."""
    response = format_response(format_reasoning(sample, restate_target), num_slots)
    referent = referent_labels(sample) if sample.query is not None else ()
    return Example(sample.image, sample.instruction, response, "format", referent=referent)


def _unique_phrase(
    obj: SceneObject, objects: list[SceneObject], attrs: tuple[str, ...], with_size: bool = False
) -> str | None:
    """Shortest phrase naming `obj` uniquely: `attrs` alone, else with its size; None if still ambiguous.
    `with_size`: always with its size ("medium star")."""
    for extra in (("size_name",),) if with_size else ((), ("size_name",)):
        keys = (*extra, *attrs)
        same = [o for o in objects if all(getattr(o, k) == getattr(obj, k) for k in keys)]
        if len(same) == 1:
            return " ".join(getattr(obj, k) for k in keys)
    return None


def _pick_object(
    sample: WorldSample, attrs: tuple[str, ...], rng: np.random.Generator, with_size: bool = False
) -> tuple[int, SceneObject, str] | None:
    """A random object that `attrs` (with its size if needed, or always when `with_size`) names uniquely:
    (index, object, phrase)."""
    objects = sample.scene.objects
    named = [
        (i, o, p)
        for i, o in enumerate(objects)
        if (p := _unique_phrase(o, objects, attrs, with_size)) is not None
    ]
    return named[int(rng.integers(len(named)))] if named else None


def question_example(
    sample: WorldSample,
    question_type: str,
    rng: np.random.Generator,
    max_count: int = 8,
    with_size: bool = False,
) -> Example | None:
    """An attribute question about `sample` (None when no object can be named unambiguously).
    `with_size`: the colour, shape and position questions name the object with its size too ("What colour
    is the medium star?") instead of by the shortest unique phrase."""
    scene = sample.scene
    if question_type == "colour":
        found = _pick_object(sample, ("shape",), rng, with_size)
        if found is None:
            return None
        target, obj, phrase = found
        prompt, answer, candidates = f"What colour is the {phrase}?", obj.colour, tuple(COLOURS)
    elif question_type == "shape":
        found = _pick_object(sample, ("colour",), rng, with_size)
        if found is None:
            return None
        target, obj, phrase = found
        prompt, answer, candidates = f"What shape is the {phrase} one?", obj.shape, SHAPES
    elif question_type == "position":
        found = _pick_object(sample, ("colour", "shape"), rng, with_size)
        if found is None:
            return None
        target, obj, phrase = found
        answer = location_words(obj, scene.width, scene.height)
        prompt, candidates = f"In which part of the image is the {phrase}?", POSITIONS
    elif question_type == "count":
        # Mostly attributes that are present (counts >= 1), sometimes any attribute (often 0).
        by = "colour" if rng.random() < 0.5 else "shape"
        pool = tuple(COLOURS) if by == "colour" else SHAPES
        value = (
            getattr(scene.objects[int(rng.integers(len(scene.objects)))], by)
            if rng.random() < 0.75
            else pool[int(rng.integers(len(pool)))]
        )
        noun = f"{value} shapes" if by == "colour" else SHAPE_PLURALS[value]
        answer = str(sum(getattr(o, by) == value for o in scene.objects))
        prompt, candidates = f"How many {noun} are there?", tuple(str(n) for n in range(max_count + 1))
        target = None
    else:
        raise ValueError(f"unknown question type {question_type!r}; known: {QUESTION_TYPES}")
    return Example(sample.image, prompt, answer, "qa", question_type, candidates, target=target)


def random_question(sample: WorldSample, rng: np.random.Generator, max_count: int = 8) -> Example:
    """A question of a random type that `sample` admits (counting always works)."""
    order = rng.permutation(len(QUESTION_TYPES))
    for i in order:
        example = question_example(sample, QUESTION_TYPES[int(i)], rng, max_count)
        if example is not None:
            return example
    raise RuntimeError("unreachable: count questions always exist")  # pragma: no cover


def make_example(
    sample: WorldSample,
    task: str,
    rng: np.random.Generator,
    num_slots: int,
    max_count: int = 8,
    restate_target: bool = True,
) -> Example:
    """An example of `task` from `sample` (`restate_target`: see `format_reasoning`)."""
    if task == "describe":
        return describe_example(sample)
    if task == "format":
        return format_example(sample, num_slots, restate_target)
    if task == "qa":
        return random_question(sample, rng, max_count)
    raise ValueError(f"unknown warm-up task {task!r}")


def answer_counts(examples: list[Example]) -> Counter[str]:
    """How often each answer occurs (for the majority-class rate)."""
    return Counter(e.response for e in examples)


def lite_sample(sample: WorldSample) -> WorldSample:
    """The sample without its masks (what the tasks need, a fraction of the memory)."""
    return WorldSample(
        sample_id=sample.sample_id,
        split=sample.split,
        index=sample.index,
        image=sample.image,
        scene=sample.scene,
        masks=np.zeros((0, 1, 1), dtype=bool),
        instruction=sample.instruction,
        kind=sample.kind,
        target_ids=sample.target_ids,
        reasoning=sample.reasoning,
        description=sample.description,
        query=sample.query,
    )
