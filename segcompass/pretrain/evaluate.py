"""Held-out figures of the staged VLM (world split "val"): answers about named objects, the referent named
by the greedy reasoning, the output format, and linear probes of hook-layer image tokens — each beside its
majority rate, and the same measures on a random-init control.

- **questions**: one question of each kind per val scene that admits it; the answer is the candidate with
  the highest likelihood (`language.score_candidates`).
- **reasoning**: greedy response to each single-target instruction; the referent named is the last
  "the {size} {colour} {shape}" phrase of the reasoning; correct when colour and shape match the target.
  Reported overall and on the instructions that do not state both the target's colour and shape.
- **format**: `<think>…</think>` + exactly K `<REF_POS>`, nothing else.
- **count_greedy**: the count questions answered greedily, the last number of the answer
  (`evaluate_count.py`; a model that lists before it counts is scored on this one).
- **text_…**: the same questions with the scene in words in the image's place (stage 0's skill; does it
  survive the image stages?).
- **answer follows the named object**: the same colour (shape) question about two objects of one image
  whose answers differ; the rate at which the model's two answers differ. A model that answers from the
  image alone, ignoring which object is named, scores ≈ 0 however often it happens to be right.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from segcompass.backbones import Backbone
from segcompass.warmup.evaluate import format_ok, generate_responses
from segcompass.warmup.tasks import Example
from segcompass.world.vocab import COLOURS, SHAPES, SIZES

from .dialogue import QUESTION_KINDS, Turn, question_turn
from .language import FeatureCache, score_candidates
from .object_vectors import ObjectVectorCache
from .pool import ScenePool

COLUMNS = ["model", "measure", "n", "accuracy", "majority"]
_PHRASE = re.compile(
    rf"the (?:({'|'.join(SIZES)}) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})", flags=re.IGNORECASE
)


@dataclass(frozen=True)
class NamedReferent:
    """Colour and shape of the last object phrase of a reasoning text (None when it names none)."""

    colour: str | None
    shape: str | None


def named_referent(reasoning: str) -> NamedReferent:
    """The referent a reasoning concludes with: its last "the [size] colour shape" phrase."""
    found = _PHRASE.findall(reasoning or "")
    if not found:
        return NamedReferent(None, None)
    _, colour, shape = found[-1]
    return NamedReferent(colour.lower(), shape.lower())


def question_items(pool: ScenePool, seed: int = 1234) -> list[tuple[int, Turn]]:
    """One question of each kind per scene (seeded independently of any training config)."""
    rng = np.random.default_rng(seed)
    items = []
    for i, scene in enumerate(pool.scenes):
        for kind in QUESTION_KINDS:
            turn = question_turn(scene.sample, kind, rng)
            if turn is not None:
                items.append((i, turn))
    return items


def question_accuracy(
    backbone: Backbone,
    pool: ScenePool,
    label: str,
    cache: FeatureCache | None = None,
    text: bool = False,
) -> list[dict]:
    """Per question kind: accuracy and majority-class rate (`cache`: the pool's image features, if
    already computed; `text`: the scenes in words instead of their images — stage 0's measure)."""
    items = question_items(pool)
    picked = score_candidates(backbone, pool, cache, items, text=text)
    rows = []
    for kind in QUESTION_KINDS:
        idx = [j for j, (_, t) in enumerate(items) if t.kind == kind]
        truth = [items[j][1].answer for j in idx]
        hits = [items[j][1].candidates[picked[j]] == items[j][1].answer for j in idx]
        majority = max(Counter(truth).values()) / len(truth) if truth else float("nan")
        measure = f"text_{kind}" if text else kind
        rows.append(table_row(label, measure, len(idx), float(np.mean(hits)), majority))
    return rows


SWAP_KINDS: dict[str, tuple[str, str]] = {
    "colour": ("shape", "What colour is the {}?"),
    "shape": ("colour", "What shape is the {} one?"),
}
"""Question kind → (the attribute that names the object, the question's wording)."""


def swap_pairs(pool: ScenePool, kind: str) -> list[tuple[int, Turn, Turn]]:
    """Per scene (at most one pair each): two questions of `kind` about two objects that one attribute
    names uniquely and whose answers differ — the same image, the same wording, only the named object
    changes."""
    by, wording = SWAP_KINDS[kind]
    candidates = tuple(COLOURS) if kind == "colour" else tuple(SHAPES)
    pairs = []
    for i, scene in enumerate(pool.scenes):
        objects = scene.sample.scene.objects
        named = [
            k for k, o in enumerate(objects) if sum(getattr(x, by) == getattr(o, by) for x in objects) == 1
        ]
        found = [
            (a, c)
            for a in named
            for c in named
            if a < c and getattr(objects[a], kind) != getattr(objects[c], kind)
        ]
        if not found:
            continue
        turns = [
            Turn(kind, wording.format(getattr(objects[k], by)), getattr(objects[k], kind), candidates, k)
            for k in found[0]
        ]
        pairs.append((i, turns[0], turns[1]))
    return pairs


def named_object_sensitivity(
    backbone: Backbone,
    pool: ScenePool,
    label: str,
    cache: FeatureCache | None = None,
    text: bool = False,
) -> list[dict]:
    """Does the answer follow the named object? Per kind (colour, shape): over `swap_pairs`, the rate at
    which the two answers differ (1.0 for a model that reads the named object; ≈ 0 for one that answers
    the image's most likely value whatever is asked), and the accuracy over both questions (`text`: the
    scenes in words instead of their images)."""
    if cache is None and not text:  # one pass of the images for both kinds
        cache = FeatureCache(backbone, pool)
    rows = []
    for kind in SWAP_KINDS:
        pairs = swap_pairs(pool, kind)
        items = [(i, t) for i, a, b in pairs for t in (a, b)]
        picked = score_candidates(backbone, pool, cache, items, text=text) if items else []
        first, second = picked[0::2], picked[1::2]
        hits = [t.candidates[p] == t.answer for (_, t), p in zip(items, picked, strict=True)]
        differ = float(np.mean(first != second)) if pairs else float("nan")
        prefix = "text_" if text else ""
        rows.append(table_row(label, f"{prefix}{kind}_answer_follows_object", len(pairs), differ))
        rows.append(
            table_row(
                label,
                f"{prefix}{kind}_swap_pair_accuracy",
                len(items),
                float(np.mean(hits)) if hits else float("nan"),
            )
        )
    return rows


def _states_both(instruction: str, colour: str, shape: str) -> bool:
    text = instruction.lower()
    return re.search(rf"\b{colour}\b", text) is not None and re.search(rf"\b{shape}", text) is not None


REASONING_COLUMNS = (
    "scene",
    "instruction",
    "reasoning",
    "output",
    "referent",
    "states_both",
    "opening",
    "format",
)


def reasoning_opening(text: str) -> str:
    """A reasoning's first step up to its first colon — the instruction's descriptor restated ("Orange
    diamonds", "First find the medium square"), which the instruction alone decides."""
    return text.replace("<think>", "", 1).split(":", 1)[0].strip()


def reasoning_outputs(
    backbone: Backbone,
    pool: ScenePool,
    num_slots: int,
    max_new_tokens: int = 200,
    image_tokens: ObjectVectorCache | None = None,
) -> pd.DataFrame:
    """The greedy response to every single-target instruction of `pool`, one row each (`REASONING_COLUMNS`):
    the pool index, the instruction, the world's reasoning, the model's output, whether the reasoning names
    the referent's colour and shape (`named_referent`), whether the instruction states both, whether it
    opens as the world's reasoning does (`reasoning_opening`), and whether the output has the format.
    `image_tokens`: the model reads these (e.g. the scenes' oracle tokens) in place of its tower's."""
    indices = [i for i, s in enumerate(pool.scenes) if len(s.sample.target_ids) == 1]
    single = [pool[i] for i in indices]
    examples = [Example(s.sample.image, s.sample.instruction, "", "format") for s in single]
    texts: list[str] = []
    for start in range(0, len(indices), GENERATE_BATCH):
        chunk = slice(start, start + GENERATE_BATCH)
        with tokens_in_place_of_the_tower(backbone, image_tokens, indices[chunk]):
            texts += generate_responses(backbone, examples[chunk], max_new_tokens, GENERATE_BATCH)
    rows = []
    for index, s, text in zip(indices, single, texts, strict=True):
        target = s.sample.scene.objects[s.sample.target_ids[0]]
        named = named_referent(text.split("</think>")[0])
        rows.append(
            dict(
                scene=index,
                instruction=s.sample.instruction,
                reasoning=s.sample.reasoning,
                output=text,
                referent=named.colour == target.colour and named.shape == target.shape,
                states_both=_states_both(s.sample.instruction, target.colour, target.shape),
                opening=reasoning_opening(text) == reasoning_opening(s.sample.reasoning),
                format=format_ok(text, num_slots),
            )
        )
    return pd.DataFrame(rows, columns=list(REASONING_COLUMNS))


def reasoning_accuracy(
    backbone: Backbone,
    pool: ScenePool,
    label: str,
    num_slots: int,
    max_new_tokens: int = 200,
    image_tokens: ObjectVectorCache | None = None,
    outputs: pd.DataFrame | None = None,
) -> list[dict]:
    """Referent named by the greedy reasoning (single-target instructions), its opening, and the format
    rate, from `reasoning_outputs` (computed here unless `outputs` holds them)."""
    if outputs is None:
        outputs = reasoning_outputs(backbone, pool, num_slots, max_new_tokens, image_tokens)
    unstated = outputs.referent[~outputs.states_both]
    return [
        table_row(label, "reasoning_referent", len(outputs), float(outputs.referent.mean())),
        table_row(label, "reasoning_referent_unstated", len(unstated), float(unstated.mean())),
        table_row(label, "reasoning_opening", len(outputs), float(outputs.opening.mean())),
        table_row(label, "format", len(outputs), float(outputs.format.mean())),  # over the single-target ones
    ]


GENERATE_BATCH = 16
"""Responses generated per batch."""


@contextlib.contextmanager
def tokens_in_place_of_the_tower(
    backbone: Backbone, image_tokens: ObjectVectorCache | None, scenes: list[int]
) -> Iterator[None]:
    """While inside, the tower's merged tokens are replaced by `image_tokens` of pool scenes `scenes` (the
    images of one generation batch, in order); nothing changes when `image_tokens` is None."""
    if image_tokens is None:
        yield
        return
    tokens = torch.cat(image_tokens.get(scenes))  # [Σ cells, D]

    def swap(module: torch.nn.Module, args: tuple, out: Any) -> Any:
        if out.pooler_output.shape != tokens.shape:
            raise ValueError(
                f"the tower gives {tuple(out.pooler_output.shape)} image tokens, the replacement "
                f"{tuple(tokens.shape)}: the processor's pixels must match the pool's grid"
            )
        out.pooler_output = tokens.to(out.pooler_output.dtype)
        return out

    handle = backbone.model.model.visual.register_forward_hook(swap)
    try:
        yield
    finally:
        handle.remove()


def table_row(model: str, measure: str, n: int, accuracy: float, majority: float = float("nan")) -> dict:
    """One row of the evaluation table (`COLUMNS`)."""
    return dict(model=model, measure=measure, n=n, accuracy=accuracy, majority=majority)
