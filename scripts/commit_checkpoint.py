"""Commit built stages of the stack and the tiny SAM to the repository's `checkpoints/` (a maintainer's step
after rebuilding them): each folder is copied under its key and recorded in `checkpoints/MANIFEST.json` with
the sha256 of every file and the command that reproduces it (`segcompass pretrain --reproduce <key>`, or
`segcompass warmup-sam --reproduce <key>` for the tiny SAM).

    python scripts/commit_checkpoint.py --stage text vision instruct --threads 1 --note "built on 2 cores"

`--stage` names stages of `StackConfig()` (the defaults `segcompass pretrain` builds) or `sam` (the default
`SamWarmupConfig()`, what `segcompass warmup-sam` builds); the folders must be built in the cache. `--threads` records the thread count they were built with. `--drop KEY …` first removes
committed stages the defaults no longer build (their manifest entries and folders).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from segcompass.committed import commit_stage, drop_stage
from segcompass.pretrain.config import StackConfig
from segcompass.pretrain.stack import ALIGN, INSTRUCT, REASON, TEXT, VISION, VISION_FINAL
from segcompass.sam_warmup.cache import SAM_STAGE
from segcompass.sam_warmup.config import SamWarmupConfig
from segcompass.stages import is_built

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stage",
        nargs="*",
        choices=("text", "reason", "vision", "vision-final", "align", "instruct", "sam"),
        default=[],
    )
    parser.add_argument("--drop", nargs="*", default=[], help="committed keys to remove first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads the stages were built with")
    parser.add_argument("--note", default="", help="free text kept in the manifest (machine, wall time)")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: the usual one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.stage and args.threads < 1:
        parser.error("--stage needs --threads (the thread count the stages were built with)")
    for key in args.drop:
        drop_stage(key, ROOT)
        logging.info("dropped %s", key)
    config = StackConfig()
    stages = {
        "text": (TEXT, config.text_stage(), "pretrain"),
        "reason": (REASON, config.reasoning_stage(), "pretrain"),
        "vision": (VISION, config.vision_stage(), "pretrain"),
        "vision-final": (VISION_FINAL, config.vision_final_stage(), "pretrain"),
        "align": (ALIGN, config.align_stage(), "pretrain"),
        "instruct": (INSTRUCT, config.instruct_stage(), "pretrain"),
        "sam": (SAM_STAGE, SamWarmupConfig(), "warmup-sam"),
    }
    for name in args.stage:
        stage, stage_config, command = stages[name]
        folder = stage.path(stage_config, args.cache_dir)
        if not is_built(folder):
            raise SystemExit(f"{name}: {folder} is not built; build it with `segcompass {command}` first")
        key = folder.name
        entry = commit_stage(
            folder,
            stage.subdir,
            f"segcompass {command} --reproduce {key}",
            args.threads,
            ROOT,
            {"note": args.note} if args.note else None,
        )
        logging.info("committed %s (%d files) to %s", entry.key, len(entry.files), entry.folder(ROOT))


if __name__ == "__main__":
    main()
