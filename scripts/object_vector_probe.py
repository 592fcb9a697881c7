"""Does the tiny language model learn to answer about a named object when each object is one input vector?

The image's look-up without a tower (`segcompass.pretrain.object_vectors`): short scenes of 2–7 of a train
scene's objects, each object one vector (the sum of its words' embeddings) in the image tokens' place, the
world's questions about named objects (colour, shape, size, position; 2 a sequence), from random init, with
or without the attention-grounding objective (`--ground`: −log of the attention mass the answer position puts
on the named object's vector, `--ground-layers`, `--ground-heads`). Every `--every` steps: held-out accuracy
(val scenes, 150 questions a cell) beside what picking one of the scene's listed values at random scores.

    python scripts/object_vector_probe.py --steps 1000 --ground 1 --ground-layers 3 --ground-heads all

`--image-steps N` then runs stage 0's second object phase (`object_phase.py`, layout "image"): whole train
scenes as the oracle tokens of their images, on the image grid, and reports held-out questions on the val
scenes' oracle tokens (`evaluate.question_accuracy`, beside the majority rate); `--from FOLDER` starts from a
saved backbone instead of the first phase (`--steps 0`).

    python scripts/object_vector_probe.py --steps 2000 --ground 1 --ground-layers 2 3 --save ot
    python scripts/object_vector_probe.py --from ot --steps 0 --image-steps 1200

`--reasoning` adds the greedy reasoning read off the oracle tokens (`evaluate.reasoning_accuracy`), and
`--image-kinds colour shape size position count format` puts the format turn (the scene's instruction → its
reasoning) among the phase's turns (a kind listed twice is drawn twice as often); `--image-lr` and
`--image-questions` change the phase's learning rate and turns per sequence; `--image-loss-per turn` weighs
every turn the same (the long reasoning no more than a one-word answer); `--texts DIR` keeps each report's
greedy responses as CSV; `--text-steps N` first runs stage 0's phase in words (the scene in words, then the
format turn) to see whether the reasoning's words carry over to the image layout, and `--image-words S`
mixes such sequences into the oracle-token phase (a share S of them).

Measured in results/warmup.md, sessions of 2026-12-06 (4) and (5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from segcompass.backbones import build_tiny, load_backbone
from segcompass.pretrain.config import IMAGE_PIXELS, StackConfig
from segcompass.pretrain.dialogue import Dialogue, question_turn
from segcompass.pretrain.evaluate import (
    named_object_sensitivity,
    question_accuracy,
    reasoning_accuracy,
    reasoning_outputs,
)
from segcompass.pretrain.grounding import capture_attention_inputs, grounding_loss, grounding_targets
from segcompass.pretrain.language import answer_loss, encode_dialogues, score_candidates
from segcompass.pretrain.object_phase import train_object_phase
from segcompass.pretrain.object_vectors import ObjectScene, ObjectVectorCache
from segcompass.pretrain.optim import Schedule, run_loop, train_only
from segcompass.pretrain.pool import ScenePool, scene_pool, set_image_pixels
from segcompass.pretrain.text import RecallPhase, recall_turns, short_scene, text_samples, train_text
from segcompass.world.config import WorldConfig
from segcompass.world.language import location_words
from segcompass.world.scene import WorldSample

CELLS = (
    (2, "colour"),
    (4, "colour"),
    (0, "colour"),
    (4, "shape"),
    (0, "shape"),
    (4, "size"),
    (4, "position"),
)
"""Held-out cells (objects in the short scene, 0: the whole scene; question kind)."""


def attribute(kind: str, sample: WorldSample):
    scene = sample.scene
    return {
        "colour": lambda o: o.colour,
        "shape": lambda o: o.shape,
        "size": lambda o: o.size_name,
        "position": lambda o: location_words(o, scene.width, scene.height),
    }[kind]


def held_out(val: list[WorldSample], n: int, kind: str, m: int = 150) -> tuple[list, list, float]:
    """(pool, items, random-listed-value baseline) of one cell, the same questions every time."""
    rng = np.random.default_rng(11 + n)
    pool, items, chance = [], [], []
    for sample in val:
        short = short_scene(sample, n, rng) if n else sample
        turn = question_turn(short, kind, rng)
        if turn is None:
            continue
        values = [attribute(kind, short)(o) for o in short.scene.objects]
        chance.append(values.count(turn.answer) / len(values))
        items.append((len(pool), turn))
        pool.append(ObjectScene.of(short))
        if len(items) == m:
            break
    return pool, items, float(np.mean(chance))


def dialogue_of(
    sample: WorldSample, index: int, rng: np.random.Generator, phase: RecallPhase
) -> tuple[Dialogue, ObjectScene]:
    """A recall dialogue about a short scene of `sample`, the scene as object vectors."""
    short = short_scene(sample, int(rng.integers(phase.objects[0], phase.objects[1] + 1)), rng)
    return Dialogue(index, recall_turns(short, rng, phase)), ObjectScene.of(short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--objects", type=int, nargs=2, default=[2, 7], help="fewest and most objects")
    parser.add_argument("--questions", type=int, default=2, help="question turns a sequence")
    parser.add_argument("--kinds", nargs="+", default=["colour", "shape", "size", "position"])
    parser.add_argument("--theta", type=float, default=20.0, help="rotary base of the language model")
    parser.add_argument("--ground", type=float, default=0.0, help="grounding weight (0: off)")
    parser.add_argument("--ground-layers", type=int, nargs="+", default=[3])
    parser.add_argument("--ground-heads", default="all", choices=["all", "best"])
    parser.add_argument("--every", type=int, default=250, help="held-out figures every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", default="", help="folder to save the trained backbone in")
    parser.add_argument("--from", dest="start", default="", help="saved backbone to start from")
    parser.add_argument("--image-steps", type=int, default=0, help="steps of the oracle-token phase")
    parser.add_argument("--image-every", type=int, default=400, help="its held-out figures every N steps")
    parser.add_argument("--image-val", type=int, default=150, help="val scenes of its figures")
    parser.add_argument(
        "--image-kinds",
        nargs="+",
        default=None,
        help="turn kinds of the oracle-token phase (default: the stack's; add `format` for the reasoning turn)",
    )
    parser.add_argument("--image-lr", type=float, default=None, help="its lr (default: the stack's)")
    parser.add_argument(
        "--image-questions", type=int, default=None, help="turns a sequence (default: the stack's)"
    )
    parser.add_argument(
        "--image-loss-per",
        default=None,
        choices=["token", "turn"],
        help="the phase's loss average (`ObjectPhase.loss_per`; default: the stack's)",
    )
    parser.add_argument(
        "--image-words",
        type=float,
        default=None,
        help="share of the phase's sequences with the scene in words and the format turn (`ObjectPhase.words`)",
    )
    parser.add_argument(
        "--texts", default="", help="folder for the greedy responses of each report (`--reasoning`), as CSV"
    )
    parser.add_argument(
        "--text-steps",
        type=int,
        default=0,
        help="steps of 32 of stage 0's phase in words (the scene in words, 2 questions, then the format turn "
        "with probability --text-format) before the oracle-token phase",
    )
    parser.add_argument("--text-format", type=float, default=1.0, help="its format-turn probability")
    parser.add_argument("--skip-start", action="store_true", help="no held-out figures before the phase")
    parser.add_argument(
        "--reasoning",
        action="store_true",
        help="also report the greedy reasoning on the oracle tokens (referent named, format)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    spec = dataclasses.replace(StackConfig().tiny_spec(), rope_theta=args.theta)
    backbone = (
        load_backbone(args.start) if args.start else build_tiny("qwen2_5_vl", seed=args.seed, spec=spec)
    )
    samples = text_samples(WorldConfig(), "train", 4000)
    cells = {(n, k): held_out(text_samples(WorldConfig(), "val", 300), n, k) for n, k in CELLS}
    print(json.dumps({"baseline": {f"{k}{n or '_all'}": round(c[2], 3) for (n, k), c in cells.items()}}))
    schedule = Schedule(steps=args.steps, batch_size=args.batch, lr=args.lr, min_lr_fraction=0.05)
    phase = RecallPhase(schedule, tuple(args.objects), args.questions, tuple(args.kinds))
    model = backbone.model
    language = [model.model.language_model, model.lm_head]
    train_only(model, language)
    start = time.time()

    def report(step: int) -> None:
        figures = {}
        for (n, kind), (pool, items, _) in cells.items():
            picked = score_candidates(backbone, pool, ObjectVectorCache(backbone, pool), items)
            right = [t.candidates[p] == t.answer for (_, t), p in zip(items, picked, strict=True)]
            figures[f"{kind}{n or '_all'}"] = round(float(np.mean(right)), 3)
        model.train()
        print(json.dumps({"step": step, "s": round(time.time() - start), **figures}), flush=True)

    def step_loss(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if step % args.every == 0:
            report(step)
        made = [
            dialogue_of(samples[int(j)], i, rng, phase)
            for i, j in enumerate(rng.choice(len(samples), args.batch))
        ]
        dialogues, pool = [d for d, _ in made], [p for _, p in made]
        batch = encode_dialogues(backbone, pool, dialogues)
        cache = ObjectVectorCache(backbone, pool)
        if args.ground == 0:
            loss = answer_loss(backbone, batch, cache)
            return loss, {"lm": float(loss.detach())}
        targets = grounding_targets(backbone, pool, dialogues, batch.inputs["input_ids"], batch.labels)
        with capture_attention_inputs(backbone, tuple(args.ground_layers)) as captured:
            lm = answer_loss(backbone, batch, cache)
        ground = grounding_loss(
            backbone, captured, batch.inputs["attention_mask"], targets, args.ground_heads
        )
        return lm + args.ground * ground, {"lm": float(lm.detach()), "grounding": float(ground.detach())}

    if args.steps:
        run_loop(language, schedule, step_loss, args.seed, "object vectors", True)
        report(args.steps)
    if args.text_steps:
        config = StackConfig()
        text = dataclasses.replace(config.text, steps=args.text_steps)
        train_text(backbone, samples, text, 2, args.text_format, config.num_slots, args.seed + 5)
    if args.image_steps:
        image_phase(backbone, args)
    if args.save:
        backbone.save(args.save)


def image_phase(backbone, args: argparse.Namespace) -> None:
    """Stage 0's oracle-token phase in runs of `--image-every` steps (each run its own warm-up and decay),
    held-out figures on the val scenes' oracle tokens after each."""
    config = StackConfig()
    set_image_pixels(backbone, *IMAGE_PIXELS)
    train = scene_pool(config, "train", IMAGE_PIXELS)
    val = ScenePool("val", scene_pool(config, "val", IMAGE_PIXELS).scenes[: args.image_val])
    start = time.time()

    def report(step: int) -> None:
        cache = ObjectVectorCache(backbone, val)
        rows = question_accuracy(backbone, val, "oracle", cache)
        rows += named_object_sensitivity(backbone, val, "oracle", cache)
        if args.reasoning:
            outputs = reasoning_outputs(backbone, val, config.num_slots, image_tokens=cache)
            rows += reasoning_accuracy(backbone, val, "oracle", config.num_slots, outputs=outputs)
            if args.texts:
                Path(args.texts).mkdir(parents=True, exist_ok=True)
                outputs.to_csv(Path(args.texts) / f"reasoning_step{step}.csv", index=False)
        figures = {r["measure"]: round(r["accuracy"], 3) for r in rows}
        majority = {r["measure"]: round(r["majority"], 3) for r in rows if r["majority"] == r["majority"]}
        print(json.dumps({"image_step": step, "s": round(time.time() - start), **figures}), flush=True)
        if step == 0:
            print(json.dumps({"majority": majority}), flush=True)

    if not args.skip_start:
        report(0)
    done = 0
    while done < args.image_steps:
        steps = min(args.image_every, args.image_steps - done)
        schedule = config.object_image.schedule
        phase = dataclasses.replace(
            config.object_image,
            schedule=dataclasses.replace(schedule, steps=steps, lr=args.image_lr or schedule.lr),
            kinds=tuple(args.image_kinds or config.object_image.kinds),
            questions=args.image_questions or config.object_image.questions,
            loss_per=args.image_loss_per or config.object_image.loss_per,
            words=config.object_image.words if args.image_words is None else args.image_words,
        )
        train_object_phase(backbone, phase, args.seed + done, images=train, num_slots=config.num_slots)
        done += steps
        report(done)


if __name__ == "__main__":
    main()
