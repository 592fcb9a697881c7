"""One tiny-SAM trial outside the stage cache: train a `SamWarmupConfig` (the defaults plus JSON overrides)
and run the stage's held-out evaluation (`evaluate_models`: trained, random-init control, prompt alone).

    python scripts/sam_trial.py NAME '{"steps": 300, "refine_iters": 1}' [--dir /tmp/samtrials]

Scene tensors are generated once per geometry (img_size, mask_size, eval_size, scenes) and kept in --dir;
the result is written to DIR/trial_NAME.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from segcompass.sam_warmup import SamWarmupConfig, TinySam
from segcompass.sam_warmup.evaluate import evaluate_models, evaluation_table
from segcompass.sam_warmup.train import SceneTensors, scene_tensors, train

logger = logging.getLogger("sam_trial")


def cached_scenes(config: SamWarmupConfig, split: str, n: int, folder: Path) -> SceneTensors:
    """The scene tensors of `split` for `config`'s geometry, generated on first use."""
    enc = config.encoder_config()
    path = folder / f"{split}{n}_i{enc.img_size}_s{config.mask_size}_f{config.eval_size}.pt"
    if path.exists():
        return SceneTensors(**torch.load(path, weights_only=True))  # tensors and lists only
    data = scene_tensors(config, split, n)
    torch.save(asdict(data), path)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("overrides", nargs="?", default="{}", help="SamWarmupConfig fields as JSON")
    ap.add_argument("--dir", default="/tmp/samtrials")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(args.overrides)
    config = SamWarmupConfig(**overrides)
    train_data = cached_scenes(config, "train", config.train_scenes, folder)
    val_data = cached_scenes(config, "val", config.val_scenes, folder)
    t0 = time.perf_counter()
    result = train(config, progress=False, data=train_data)
    train_s = time.perf_counter() - t0
    torch.manual_seed(config.seed + 1)
    evaluation = evaluate_models(result.model, TinySam(config).eval(), val_data)
    out = {
        "name": args.name,
        "overrides": overrides,
        "train_s": train_s,
        "eval_s": time.perf_counter() - t0 - train_s,
        "threads": torch.get_num_threads(),
        "loss_last50": sum(result.losses[-50:]) / max(1, len(result.losses[-50:])),
        **evaluation,
    }
    (folder / f"trial_{args.name}.json").write_text(json.dumps(out, indent=2))
    torch.save(result.model.state_dict(), folder / f"model_{args.name}.pt")
    table = evaluation_table(evaluation).to_string(float_format="{:.3f}".format)
    logger.info("%s: train %.0f s\n%s", args.name, train_s, table)


if __name__ == "__main__":
    main()
