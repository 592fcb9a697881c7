"""Continue stage 1 (vision pretraining) from a saved backbone: more steps on more scenes, fresh read-out heads,
the merged-token probes (colour / shape / object, held-out val) every `--every` steps.

    python scripts/continue_vision.py --start <stage-1 folder> --scenes 4000 --steps 3000 --save v2
    python scripts/continue_vision.py --start v2 --scenes 6000 --steps 3000 --save v3

Measured in results/warmup.md, session of 2026-12-06 (5) (the stage-1 rows of "The tower's shape").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

import torch

from segcompass.backbones import load_backbone
from segcompass.pretrain.config import StackConfig
from segcompass.pretrain.optim import Schedule
from segcompass.pretrain.pool import ScenePool, scene_pool, set_image_pixels
from segcompass.pretrain.probe import merged_tokens, token_probes
from segcompass.pretrain.stack import vision_pixel_range
from segcompass.pretrain.vision import train_tower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", required=True, help="backbone folder to continue (a stage-1 folder)")
    parser.add_argument("--scenes", type=int, default=4000, help="train scenes 0 … n − 1")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak lr of a new warm-up + cosine schedule")
    parser.add_argument("--every", type=int, default=1000, help="probes every N steps")
    parser.add_argument("--seed", type=int, default=1, help="batch order")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", default="", help="folder to save the result in")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = dataclasses.replace(StackConfig(), train_scenes=args.scenes)
    pixels = vision_pixel_range(config)
    backbone = load_backbone(args.start)
    set_image_pixels(backbone, *pixels)
    train, val = scene_pool(config, "train", pixels), scene_pool(config, "val", pixels)
    probe_train = ScenePool("train", train.scenes[:500])
    start = time.time()

    def probe(tag: str) -> None:
        backbone.model.eval()
        results = token_probes(
            merged_tokens(backbone, probe_train), probe_train, merged_tokens(backbone, val), val
        )
        accuracy = {k: round(v.accuracy, 3) for k, v in results.items()}
        print(json.dumps({"tag": tag, "s": round(time.time() - start), **accuracy}), flush=True)
        backbone.model.train()

    probe("start")
    schedule = Schedule(steps=args.steps, batch_size=config.vision.batch_size, lr=args.lr)

    def every(step: int) -> None:
        if step and step % args.every == 0:
            probe(f"step {step}")

    train_tower(backbone, train, schedule, config.vision_objective, args.seed, "stage 1, continued", every)
    probe(f"after {args.steps}")
    if args.save:
        backbone.save(args.save)


if __name__ == "__main__":
    main()
