"""Held-out evaluation of a tiny SAM at the evaluation side F (`eval_size`, e.g. 128²).

The low-res mask logits (S², 4 × the embedding grid) are upsampled bilinearly to F² (SAM's postprocess) and
thresholded at 0; the ground truth is each instance's mask letterboxed straight to F². Three deterministic
prompts per held-out instance, each beside the prompt alone as a mask and a random-init control model:

- `point`: one positive point at the instance's most interior pixel; prompt alone: a disk of the instance's
  equal-area radius around it;
- `heatmap`: the instance's own coarse heatmap (its mask averaged on the embedding grid, upsampled, as
  logits, no noise); prompt alone: the heatmap upsampled to F² and thresholded at 0;
- `blob`: the centre blob of warm-up v1 (kept for comparison); prompt alone: the blob likewise.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from .config import SamWarmupConfig
from .points import POSITIVE, disk_baseline, interior_point, to_input_coords
from .prompts import centre_blob_prompt, coarse_heatmap
from .train import SceneTensors, TinySam, scene_tensors, upsample

PROMPTS = ("point", "heatmap", "blob")
"""The evaluation's prompt kinds."""
MODELS = ("trained", "control", "prompt_only")
"""The columns of each prompt kind: the trained model, the random-init control, the prompt alone."""


def mask_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """IoU of boolean masks [n, H, W] vs [n, H, W] → [n] (an empty union counts as 0)."""
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return inter / union.clamp(min=1)


def dense_prompts(kind: str, masks: Tensor) -> Tensor:
    """The deterministic dense prompts of `masks` [n, S, S] → logits [n, S, S] (`heatmap` or `blob`)."""
    make = {"heatmap": coarse_heatmap, "blob": centre_blob_prompt}[kind]
    return torch.stack([make(m) for m in masks])


def interior_points(fine: Tensor, img_size: int) -> tuple[Tensor, Tensor]:
    """One positive point per instance at its most interior pixel: fine masks [n, F, F] → SAM's
    (coords [n, 1, 2] in input pixels, labels [n, 1])."""
    yx = torch.tensor([interior_point(m) for m in fine], dtype=torch.long).view(-1, 1, 2)  # [n, 1, 2]
    coords = to_input_coords(yx, fine.shape[-1], img_size)
    return coords, torch.full((len(fine), 1), POSITIVE, dtype=torch.long)


def prompt_only_masks(kind: str, masks: Tensor, fine: Tensor) -> Tensor:
    """The prompt alone as a mask at F²: [n, F, F] bool."""
    if kind == "point":
        return torch.stack([disk_baseline(m) for m in fine])
    return upsample(dense_prompts(kind, masks), fine.shape[-1]) > 0


@torch.no_grad()
def predicted_masks(model: TinySam, kind: str, emb: Tensor, masks: Tensor, fine: Tensor) -> Tensor:
    """The model's masks at F² for every instance of one scene: its embedding [1, 256, g, g], masks
    [n, S, S], fine [n, F, F] → bool [n, F, F]."""
    index = torch.zeros(len(masks), dtype=torch.long)
    if kind == "point":
        coords, labels = interior_points(fine, model.image_encoder.img_size)
        logits = model.decode_points(emb, index, coords, labels)  # [n, S, S]
    else:
        logits = model.decode(emb, dense_prompts(kind, masks)[None])[0]  # [n, S, S]
    return upsample(logits, fine.shape[-1]) > 0


@torch.no_grad()
def instance_ious(data: SceneTensors, model: TinySam | None, kinds=PROMPTS) -> dict[str, Tensor]:
    """IoU at F² of every instance of `data` under each prompt kind → {kind: [n_inst]}; `model` None:
    the prompt alone."""
    out: dict[str, list[Tensor]] = {kind: [] for kind in kinds}
    for j, (masks, fine) in enumerate(zip(data.masks, data.fine, strict=True)):
        if not len(masks):
            continue
        emb = None if model is None else model.image_encoder(data.pixels[j : j + 1].float())  # [1, 256, g, g]
        for kind in kinds:
            if model is None:
                pred = prompt_only_masks(kind, masks, fine)
            else:
                pred = predicted_masks(model, kind, emb, masks, fine)
            out[kind].append(mask_iou(pred, fine))
    return {kind: torch.cat(v) if v else torch.zeros(0) for kind, v in out.items()}


def evaluate_models(trained: TinySam, control: TinySam, data: SceneTensors) -> dict:
    """Mean IoU per prompt kind and model (`trained`, `control`, `prompt_only`) on `data`."""
    ious = {name: instance_ious(data, m) for name, m in (("trained", trained), ("control", control),
                                                          ("prompt_only", None))}  # fmt: skip
    result: dict = {"instances": int(sum(len(m) for m in data.masks))}
    for kind in PROMPTS:
        result[kind] = {name: float(ious[name][kind].mean()) for name in MODELS}
    return result


def evaluate_sam(model: TinySam, config: SamWarmupConfig) -> dict:
    """Held-out evaluation of `model` on `config.val_scenes` val scenes beside a random-init control
    (seed + 1) and the prompts alone; the stage's metrics (`sam_warmup_eval.json`)."""
    val = scene_tensors(config, "val", config.val_scenes)
    torch.manual_seed(config.seed + 1)
    control = TinySam(config).eval()
    return {
        "eval_size": config.eval_size,
        "scenes": config.val_scenes,
        **evaluate_models(model, control, val),
    }


def evaluation_table(evaluation: dict) -> pd.DataFrame:
    """The metrics as a table: one row per prompt kind, columns trained / random-init control / prompt alone
    (mean IoU at `eval_size`²); an evaluation of warm-up v1 (flat centre-blob keys) gives its one row."""
    if "point" not in evaluation:  # v1: centre blob only, at the mask size
        rows = {"blob": {m: evaluation[m] for m in MODELS}}
    else:
        rows = {kind: evaluation[kind] for kind in PROMPTS if kind in evaluation}
    table = pd.DataFrame.from_dict(rows, orient="index")[list(MODELS)]
    table.index.name = "prompt"
    return table.rename(columns={"control": "random_init", "prompt_only": "prompt_alone"})
