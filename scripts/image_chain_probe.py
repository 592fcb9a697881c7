"""The image half of the staged chain: a stage-1 tower under a stage-0 language model that read oracle tokens.

The merger's last layer is fitted in closed form so the image tokens equal the oracle tokens
(`pretrain/align.py`), then held-out questions on the val images; `--tune-steps N` then tunes the language
model on the image tokens (stage 0's image-layout turns: colour / shape / size / position / count of named
objects, grounding on layers 2–3; the tower and merger frozen), with the figures after every `--every`.
`--tower-steps N` first tunes the tower and merger through the frozen language model on the same turns
(`pretrain/tower_tuning.py`; `--oracle-weight` adds the regression to the oracle tokens).

    python scripts/image_chain_probe.py --tower <stage-1 folder> --language <stage-0 folder> --tune-steps 600

Measured in results/warmup.md, session of 2026-12-06 (5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

import numpy as np
import torch

from segcompass.backbones import Backbone, load_backbone
from segcompass.pretrain.align import fit_merger_readout
from segcompass.pretrain.config import IMAGE_PIXELS, StackConfig
from segcompass.pretrain.dialogue import Dialogue
from segcompass.pretrain.evaluate import named_object_sensitivity, question_accuracy
from segcompass.pretrain.language import FeatureCache, adopt_language_model, train_dialogues
from segcompass.pretrain.optim import Schedule
from segcompass.pretrain.pool import ScenePool, scene_pool, set_image_pixels
from segcompass.pretrain.text import recall_turns
from segcompass.pretrain.tower_tuning import tune_tower


def figures(backbone: Backbone, val: ScenePool, tag: str) -> None:
    backbone.model.eval()
    cache = FeatureCache(backbone, val)
    rows = question_accuracy(backbone, val, tag, cache) + named_object_sensitivity(backbone, val, tag, cache)
    print(json.dumps({"tag": tag, **{r["measure"]: round(r["accuracy"], 3) for r in rows}}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower", required=True, help="backbone folder whose vision tower is used")
    parser.add_argument("--language", required=True, help="backbone folder whose language model is used")
    parser.add_argument("--ridge", type=float, default=1e-2, help="ridge penalty per token of the fit")
    parser.add_argument("--tune-steps", type=int, default=0, help="steps of 32 tuning the language model")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--every", type=int, default=300, help="held-out figures every N tuning steps")
    parser.add_argument("--val", type=int, default=150, help="val scenes of the figures")
    parser.add_argument("--tower-steps", type=int, default=0, help="steps tuning tower + merger first")
    parser.add_argument("--tower-lr", type=float, default=3e-4)
    parser.add_argument("--tower-batch", type=int, default=32)
    parser.add_argument("--oracle-weight", type=float, default=0.0, help="weight of the oracle regression")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", default="", help="folder to save the result in")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    backbone = load_backbone(args.tower)
    adopt_language_model(backbone, load_backbone(args.language))
    set_image_pixels(backbone, *IMAGE_PIXELS)
    config = StackConfig()
    train = scene_pool(config, "train", IMAGE_PIXELS)
    val = ScenePool("val", scene_pool(config, "val", IMAGE_PIXELS).scenes[: args.val])

    start = time.time()
    fit = fit_merger_readout(backbone, train, args.ridge)
    print(json.dumps({"merger_readout": fit._asdict(), "s": round(time.time() - start)}), flush=True)
    figures(backbone, val, "closed-form merger")

    phase = config.object_image

    def make(scene: int, rng: np.random.Generator) -> Dialogue:
        return Dialogue(scene, recall_turns(train[scene].sample, rng, phase))

    done = 0  # runs of `--every` steps of tower tuning, each its own schedule
    while done < args.tower_steps:
        steps = min(args.every, args.tower_steps - done)
        schedule = Schedule(steps=steps, batch_size=args.tower_batch, lr=args.tower_lr)
        tune_tower(
            backbone, train, schedule, make, 100 + done, phase.grounding, oracle_weight=args.oracle_weight
        )
        done += steps
        figures(backbone, val, f"tower tuned {done}")
    cache = FeatureCache(backbone, train)

    done = 0  # runs of `--every` steps, each with stage 0's image-phase schedule at `--lr`
    while done < args.tune_steps:
        steps = min(args.every, args.tune_steps - done)
        schedule = dataclasses.replace(phase.schedule, steps=steps, lr=args.lr)
        train_dialogues(backbone, train, cache, schedule, make, done, "tune", grounding=phase.grounding)
        done += steps
        figures(backbone, val, f"tuned {done}")
    if args.save:
        backbone.save(args.save)


if __name__ == "__main__":
    main()
