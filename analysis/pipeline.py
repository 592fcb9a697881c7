"""The default pipeline on the built-in world: synthetic data → tiny backbone → hook-layer states → summary.

This is what `./dev.sh run` (`segcompass-analyze pipeline`) executes. Each stage caches its output under
`--out`, keyed by its config, so a re-run reuses it. Later stages (SAE training, coverage report) extend
this file as they land.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from segcompass.backbones import Backbone, TokenType, resolve_backbone
from segcompass.world import WorldConfig, WorldSample, generate_split, write_refcoco_style

logger = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """Run the default SegCompass pipeline on the built-in synthetic world and print what it found."""

    out: str = "runs/default"
    """Folder for the generated data and the reports; a re-run reuses what is cached there."""
    backbone: str = "tiny:qwen2_5_vl"
    """`tiny:<family>` (random-weight preset), a local checkpoint folder, or a hub id."""
    split: str = "val"
    """Synthetic-world split to read."""
    num_samples: int = 64
    """Number of (image, instruction) samples to run."""
    batch_size: int = 16
    """Samples per forward pass."""
    seed: int = 0
    """Seed of the synthetic world and of the tiny backbone's random weights."""


@dataclass
class PipelineResult:
    """What the pipeline found (also written as CSV under `out`)."""

    data_dir: Path
    """The synthetic data set in COCO + gRefCOCO format."""
    token_types: pd.DataFrame
    """One row per token type: count and the mean L2 norm of the hook-layer state."""
    image_tokens: pd.DataFrame
    """One row per image-token location (referred target / distractor / background): count and norm."""


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    """Generate (or reuse) the data, run the backbone, summarise the hook-layer states by token type."""
    out = Path(cfg.out)
    world = WorldConfig(seed=cfg.seed)
    data_dir = _world_data(out, world, cfg)
    backbone = resolve_backbone(cfg.backbone, seed=cfg.seed)
    logger.info(
        "backbone %s: %s, %d layers, d=%d, hook layer %d",
        cfg.backbone,
        backbone.family.name,
        backbone.num_layers,
        backbone.hidden_size,
        backbone.hook_layer,
    )
    samples = generate_split(world, cfg.split, cfg.num_samples)
    token_rows, image_rows = _hook_state_statistics(backbone, samples, cfg)
    token_table = _summarise(token_rows, "token type")
    image_table = _summarise(image_rows, "image token on")
    report_dir = out / "reports"
    report_dir.mkdir(parents=True, exist_ok=True)
    _atomic_csv(token_table, report_dir / "hook_states_by_token_type.csv")
    _atomic_csv(image_table, report_dir / "image_tokens_by_location.csv")
    return PipelineResult(data_dir, token_table, image_table)


def _world_data(out: Path, world: WorldConfig, cfg: PipelineConfig) -> Path:
    key = hashlib.sha256(
        json.dumps([asdict(world), cfg.split, cfg.num_samples], default=str).encode()
    ).hexdigest()
    data_dir = out / "data" / f"world-{key[:12]}"
    if (data_dir / "instances.json").exists():
        logger.info("reusing synthetic data in %s", data_dir)
    else:
        logger.info("writing %d synthetic %s samples to %s", cfg.num_samples, cfg.split, data_dir)
        write_refcoco_style(data_dir, world, {cfg.split: cfg.num_samples})
    return data_dir


def _batches(samples: Iterator[WorldSample], size: int) -> Iterator[list[WorldSample]]:
    batch: list[WorldSample] = []
    for s in samples:
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def _hook_state_statistics(
    backbone: Backbone, samples: Iterator[WorldSample], cfg: PipelineConfig
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(label, ‖h‖) pairs per token: by token type, and image tokens by what lies under them."""
    token_rows: list[tuple[str, float]] = []
    image_rows: list[tuple[str, float]] = []
    progress = tqdm(total=cfg.num_samples, desc="forward", unit="sample")
    for batch in _batches(samples, cfg.batch_size):
        prepared = backbone.prepare([s.image for s in batch], [s.instruction for s in batch])
        states = backbone.model(**prepared.inputs, output_hidden_states=True).hidden_states[
            backbone.hook_layer
        ]
        norms = states.float().norm(dim=-1)  # [B, T]
        for b, sample in enumerate(batch):
            types = prepared.token_types[b]
            for t in types.unique().tolist():
                if t != TokenType.PAD:
                    sel = norms[b][types == t].tolist()
                    token_rows += [(TokenType(t).name.lower(), v) for v in sel]
            location = _image_token_locations(sample, prepared.geometries[b])
            image_norms = norms[b][types == TokenType.IMAGE].tolist()
            image_rows += list(zip(location, image_norms, strict=True))
        progress.update(len(batch))
    progress.close()
    return token_rows, image_rows


def _image_token_locations(sample: WorldSample, geometry) -> list[str]:
    """For each image token (row-major): 'referred target', 'distractor' or 'background' under its cell.

    A token counts as on an object when at least half of its cell's pixels belong to that object's mask.
    """
    index_map = geometry.token_index_map()  # [H, W] token index per pixel
    n = geometry.num_tokens
    cell_pixels = np.bincount(index_map[index_map >= 0], minlength=n).clip(min=1)
    labels = np.array(["background"] * n, dtype=object)
    targets = set(sample.target_ids)
    for order in (False, True):  # distractors first, so a referred target wins a shared cell
        for i, mask in enumerate(sample.masks):
            if (i in targets) != order:
                continue
            hits = np.bincount(index_map[mask & (index_map >= 0)], minlength=n)
            labels[hits / cell_pixels >= 0.5] = "referred target" if order else "distractor"
    return labels.tolist()


def _summarise(rows: list[tuple[str, float]], label: str) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[label, "norm"])
    table = df.groupby(label)["norm"].agg(tokens="size", mean_norm="mean", std_norm="std").reset_index()
    return table.sort_values("tokens", ascending=False, ignore_index=True)


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def main(cfg: PipelineConfig) -> PipelineResult:
    """CLI entry: run and print."""
    result = run_pipeline(cfg)
    with pd.option_context("display.float_format", "{:.3f}".format):
        print(f"\nSynthetic data (COCO instances.json + gRefCOCO refs): {result.data_dir}")
        print(f"\nHook-layer states by token type ({cfg.backbone}):")
        print(result.token_types.to_string(index=False))
        print("\nImage tokens by what lies under them:")
        print(result.image_tokens.to_string(index=False))
    print(f"\nTables written to {Path(cfg.out) / 'reports'}")
    return result
