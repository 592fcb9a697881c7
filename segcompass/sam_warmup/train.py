"""The tiny-SAM warm-up loop: SAM's promptable objective (20·focal + dice on the prompted instance's mask)
on world scenes, every parameter of the image encoder, prompt encoder and mask decoder trained."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from segcompass.head.image_encoder import build_sam_image_encoder
from segcompass.head.losses import dice_per_pair, focal_per_pair
from segcompass.head.mask_decoder import SamMaskHead
from segcompass.head.preprocess import preprocess_image, preprocess_masks
from segcompass.world.generate import generate_split
from segcompass.world.vocab import COLOURS, SHAPES

from .config import SamWarmupConfig
from .prompts import blob_prompt, centre_blob_prompt, coarse_prompt

logger = logging.getLogger(__name__)


class TinySam(nn.Module):
    """Image encoder + prompt encoder + mask decoder under SAM's parameter names (`image_encoder.*`,
    `prompt_encoder.*`, `mask_decoder.*`), so `state_dict()` is a SAM checkpoint the head loads."""

    def __init__(self, config: SamWarmupConfig):
        super().__init__()
        enc = config.encoder_config()
        self.image_encoder = build_sam_image_encoder(enc).requires_grad_(True)
        head = SamMaskHead(config.decoder_config(), enc.out_chans, enc.grid_size, enc.img_size)
        self.prompt_encoder, self.mask_decoder = head.prompt_encoder, head.mask_decoder
        self._head = [head]  # not a submodule: its parameters are the two above

    def forward(self, pixels: Tensor, prompts: Tensor) -> Tensor:
        """pixels [B, 3, I, I] (SAM-normalised, padded) + dense prompts [B, P, S, S] → mask logits [B, P, S, S]."""
        return self.decode(self.image_encoder(pixels), prompts)

    def decode(self, image_embeddings: Tensor, prompts: Tensor) -> Tensor:
        """image_embeddings [B, 256, g, g] + prompts [B, P, S, S] → mask logits [B, P, S, S]."""
        return self._head[0](image_embeddings, prompts)


class AttributeProbe(nn.Module):
    """Auxiliary 1×1-conv classifier of each embedding patch's colour and shape (+ background); trained
    beside the SAM objective so the tiny encoder's features carry what real SAM features carry after
    SA-1B pretraining at scale. Not part of the saved SAM checkpoint."""

    def __init__(self, embed_dim: int = 256):
        super().__init__()
        self.colour = nn.Conv2d(embed_dim, len(COLOURS) + 1, 1)
        self.shape = nn.Conv2d(embed_dim, len(SHAPES) + 1, 1)

    def loss(self, image_embeddings: Tensor, colours: Tensor, shapes: Tensor) -> Tensor:
        """Mean cross-entropy of both per-patch classifications (embeddings [B, C, g, g], labels [B, g, g])."""
        return F.cross_entropy(self.colour(image_embeddings), colours) + F.cross_entropy(
            self.shape(image_embeddings), shapes
        )


@dataclass
class SceneTensors:
    """World scenes preprocessed once: pixels and instance masks in the SAM letterbox."""

    pixels: Tensor
    """[N, 3, I, I] float16, SAM-normalised and padded."""
    masks: list[Tensor]
    """N tensors [n_i, S, S] bool, the non-empty visible instances of each scene."""
    attributes: list[Tensor]
    """N tensors [n_i, 2] long: (colour index, shape index) of each kept instance (`vocab` order)."""

    def patch_labels(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Per-patch (colour, shape) labels on the embedding grid for scenes `index` → 2 × [B, S/4, S/4];
        background patches get the extra class (len(COLOURS), len(SHAPES))."""
        colours, shapes = [], []
        for j in index.tolist():
            m = self.masks[j].float()  # [n, S, S]
            side = m.shape[-1] // 4
            c = torch.full((side, side), len(COLOURS), dtype=torch.long)
            s = torch.full((side, side), len(SHAPES), dtype=torch.long)
            if len(m):
                cover = F.avg_pool2d(m[:, None], 4)[:, 0]  # [n, g, g] fraction of each patch
                best, which = cover.max(0)
                on = best > 0.5
                c[on] = self.attributes[j][which[on], 0]
                s[on] = self.attributes[j][which[on], 1]
            colours.append(c)
            shapes.append(s)
        return torch.stack(colours), torch.stack(shapes)


def scene_tensors(config: SamWarmupConfig, split: str, n: int, progress: bool = False) -> SceneTensors:
    """Generate scenes 0 … n − 1 of `split` and letterbox them (image to `img_size`, masks to S)."""
    img_size, s = config.encoder_config().img_size, config.mask_size
    pixels, masks, attributes = [], [], []
    for sample in tqdm(generate_split(config.world_config(), split, n), total=n, desc=f"scenes {split}",
                       disable=not progress, leave=False):  # fmt: skip
        pixels.append(preprocess_image(sample.image, img_size).pixels.half())
        m = preprocess_masks(sample.masks, img_size, s) > 0.5  # [n_obj, S, S]
        keep = m.flatten(1).any(1)
        attrs = torch.tensor(
            [[list(COLOURS).index(o.colour), SHAPES.index(o.shape)] for o in sample.scene.objects],
            dtype=torch.long,
        ).view(-1, 2)
        masks.append(m[keep])
        attributes.append(attrs[keep])
    return SceneTensors(torch.stack(pixels), masks, attributes)


def sample_batch(
    data: SceneTensors, config: SamWarmupConfig, g: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(pixels [B, 3, I, I], prompts [B, P, S, S], targets [B, P, S, S], scene indices [B]) for one step."""
    usable = [i for i, m in enumerate(data.masks) if len(m)]
    pick = torch.randint(len(usable), (config.batch_images,), generator=g).tolist()
    prompts, targets = [], []
    for j in pick:
        inst = data.masks[usable[j]]
        which = torch.randint(len(inst), (config.prompts_per_image,), generator=g).tolist()
        for w in which:
            m = inst[w]
            blob = float(torch.rand((), generator=g)) < config.blob_fraction
            prompts.append(blob_prompt(m, g) if blob else coarse_prompt(m, g))
            targets.append(m.float())
    b, p, s = config.batch_images, config.prompts_per_image, config.mask_size
    scenes = torch.tensor([usable[j] for j in pick])
    pixels = data.pixels[scenes].float()
    return pixels, torch.stack(prompts).view(b, p, s, s), torch.stack(targets).view(b, p, s, s), scenes


@dataclass
class SamTrainResult:
    """A trained tiny SAM and how its training went."""

    model: TinySam
    """The trained model (eval mode)."""
    losses: list[float] = field(default_factory=list)
    """Loss of every step."""
    wall_s: float = 0.0
    """Seconds for the whole call."""
    scene_s: float = 0.0
    """Of which generating and preprocessing scenes."""


def _lr_factor(step: int, total: int) -> float:
    warm = max(1, int(0.05 * total))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def train(config: SamWarmupConfig, progress: bool = True, data: SceneTensors | None = None) -> SamTrainResult:
    """Train a tiny SAM from `config.seed` (deterministic for a seed on one thread count)."""
    t0 = time.perf_counter()
    data = data or scene_tensors(config, "train", config.train_scenes, progress)
    scene_s = time.perf_counter() - t0
    torch.manual_seed(config.seed)
    model = TinySam(config).train()
    probe = AttributeProbe(config.encoder_config().out_chans)
    params = [*model.parameters(), *probe.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, config.steps))
    g = torch.Generator().manual_seed(config.seed)
    losses = []
    bar = tqdm(range(config.steps), desc="tiny-SAM warm-up", disable=not progress)
    for _ in bar:
        pixels, prompts, targets, scenes = sample_batch(data, config, g)
        emb = model.image_encoder(pixels)  # [B, 256, g, g]
        logits = model.decode(emb, prompts).flatten(0, 1)  # [B·P, S, S]
        t = targets.flatten(0, 1)
        loss = (config.focal_weight * focal_per_pair(logits, t) + dice_per_pair(logits, t)).mean()
        if config.attribute_weight > 0:
            loss = loss + config.attribute_weight * probe.loss(emb, *data.patch_labels(scenes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval().requires_grad_(False)
    return SamTrainResult(model, losses, time.perf_counter() - t0, scene_s)


@torch.no_grad()
def prompted_iou(model: TinySam, data: SceneTensors, batch: int = 16) -> Tensor:
    """IoU (logit > 0 vs GT) of every held-out instance under its deterministic centre-blob prompt [n_inst]."""
    ious = []
    for i in range(0, len(data.masks), batch):
        idx = [j for j in range(i, min(i + batch, len(data.masks))) if len(data.masks[j])]
        for j in idx:
            inst = data.masks[j]  # [n, S, S]
            prompts = torch.stack([centre_blob_prompt(m) for m in inst])[None]  # [1, n, S, S]
            pred = model(data.pixels[j : j + 1].float(), prompts)[0] > 0  # [n, S, S]
            ious.append(_iou(pred, inst))
    return torch.cat(ious) if ious else torch.zeros(0)


def prompt_only_iou(data: SceneTensors) -> Tensor:
    """The trivial baseline: the prompt itself thresholded at 0 as the mask [n_inst]."""
    ious = [
        _iou(torch.stack([centre_blob_prompt(m) for m in inst]) > 0, inst) for inst in data.masks if len(inst)
    ]
    return torch.cat(ious) if ious else torch.zeros(0)


def _iou(pred: Tensor, gt: Tensor) -> Tensor:
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return inter / union.clamp(min=1)
