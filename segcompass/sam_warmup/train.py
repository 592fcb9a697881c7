"""The tiny-SAM warm-up loop: SAM's promptable objective (20·focal + dice on the prompted instance's mask,
the low-res logits upsampled to `loss_size`) on world scenes, prompts a mix of SAM's point prompts and
dense mask prompts, each followed by `refine_iters` passes of SAM's iterative training (the previous logits as
the mask prompt, a click on the previous error); every parameter of the image encoder, prompt encoder and
mask decoder trained."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from segcompass.head.image_encoder import build_sam_image_encoder
from segcompass.head.losses import dice_per_pair, focal_per_pair
from segcompass.head.mask_decoder import SamMaskHead
from segcompass.head.preprocess import preprocess_image, preprocess_masks
from segcompass.loop_checkpoints import CheckpointedLoop, LoopState, open_loop
from segcompass.world.generate import generate_split
from segcompass.world.vocab import COLOURS, SHAPES

from .config import SamWarmupConfig
from .points import error_clicks, sample_point_prompt, stack_points, to_input_coords
from .prompts import blob_prompt, coarse_prompt

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
        if config.tie_qk_init:
            tie_cross_attention_qk(self.mask_decoder.transformer)

    def forward(self, pixels: Tensor, prompts: Tensor) -> Tensor:
        """pixels [B, 3, I, I] (SAM-normalised, padded) + dense prompts [B, P, S, S] → mask logits [B, P, S, S]."""
        return self.decode(self.image_encoder(pixels), prompts)

    def decode(self, image_embeddings: Tensor, prompts: Tensor) -> Tensor:
        """image_embeddings [B, 256, g, g] + prompts [B, P, S, S] → mask logits [B, P, S, S] (the head's path)."""
        return self._head[0](image_embeddings, prompts)

    def decode_points(
        self,
        image_embeddings: Tensor,
        image_index: Tensor,
        coords: Tensor,
        labels: Tensor,
        masks: Tensor | None = None,
    ) -> Tensor:
        """Point prompts through SAM's prompt encoder (padded with one −1 point, as SAM without a box) and
        its no-mask embedding.

        Args:
            image_embeddings: [B, 256, g, g].
            image_index: [N] the image of each prompt.
            coords: [N, n, 2] (x, y) in input pixels; labels: [N, n] (1 positive, 0 negative, −1 padding).
            masks: [N, 1, S, S] dense mask prompts (logits) beside the points, or None (SAM's no-mask embedding).
        Returns:
            mask logits [N, S, S].
        """
        sparse, dense = self.prompt_encoder(points=(coords, labels), boxes=None, masks=masks)
        # sparse: [N, n + 1, 256]; dense: [N, 256, g, g] (the mask prompt's or the no-mask embedding)
        return self._head[0].predict(image_embeddings, image_index, sparse, dense)


@torch.no_grad()
def tie_cross_attention_qk(transformer: nn.Module) -> None:
    """Start every token↔image cross-attention with its key projection equal to its query projection, so
    that a point's positional encoding already matches the image positions around it (q·k = (W·pe_p)·(W·pe_i)
    follows pe_p·pe_i; with independent random projections it is noise until learnt). Only the init changes:
    the parameters stay SAM's."""
    for name, module in transformer.named_modules():
        cross = "cross_attn" in name or "final_attn" in name
        if cross and hasattr(module, "q_proj") and hasattr(module, "k_proj"):
            module.k_proj.weight.copy_(module.q_proj.weight)
            module.k_proj.bias.copy_(module.q_proj.bias)


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
    fine: list[Tensor]
    """N tensors [n_i, F, F] bool, the same instances at the evaluation side F (`eval_size`)."""
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
    """Generate scenes 0 … n − 1 of `split` and letterbox them (image to `img_size`, masks to S and F);
    instances empty at either side are left out."""
    img_size, s, f = config.encoder_config().img_size, config.mask_size, config.eval_size
    pixels, masks, fine, attributes = [], [], [], []
    for sample in tqdm(generate_split(config.world_config(), split, n), total=n, desc=f"scenes {split}",
                       disable=not progress, leave=False):  # fmt: skip
        pixels.append(preprocess_image(sample.image, img_size).pixels.half())
        m = preprocess_masks(sample.masks, img_size, s) > 0.5  # [n_obj, S, S]
        mf = preprocess_masks(sample.masks, img_size, f) > 0.5  # [n_obj, F, F]
        keep = m.flatten(1).any(1) & mf.flatten(1).any(1)
        attrs = torch.tensor(
            [[list(COLOURS).index(o.colour), SHAPES.index(o.shape)] for o in sample.scene.objects],
            dtype=torch.long,
        ).view(-1, 2)
        masks.append(m[keep])
        fine.append(mf[keep])
        attributes.append(attrs[keep])
    return SceneTensors(torch.stack(pixels), masks, fine, attributes)


@dataclass
class Batch:
    """One training step's images and prompts; prompts are grouped by kind (dense first, then points),
    each with the index of its image in the batch, and `targets` follows that order."""

    pixels: Tensor
    """[B, 3, I, I] float."""
    scenes: Tensor
    """[B] scene index of each image."""
    dense_image: Tensor
    """[Nd] long: the image of each dense prompt."""
    dense: Tensor
    """[Nd, S, S] dense mask prompts (logits)."""
    point_image: Tensor
    """[Np] long: the image of each point prompt."""
    coords: Tensor
    """[Np, n, 2] point coords (x, y) in input pixels."""
    labels: Tensor
    """[Np, n] SAM point labels (−1: padding)."""
    targets: Tensor
    """[Nd + Np, L, L] float: each prompt's instance at the loss side L."""


def sample_batch(data: SceneTensors, config: SamWarmupConfig, g: torch.Generator) -> Batch:
    """Draw `batch_images` scenes and `prompts_per_image` prompted instances of each (with replacement);
    each prompt is a point prompt with probability `point_fraction`, else a blob or coarse dense prompt."""
    usable = [i for i, m in enumerate(data.masks) if len(m)]
    pick = torch.randint(len(usable), (config.batch_images,), generator=g).tolist()
    img_size, s, f = config.encoder_config().img_size, config.mask_size, config.eval_size
    dense, dense_image, dense_t, points, point_image, point_t = [], [], [], [], [], []
    for b, j in enumerate(pick):
        inst, fine = data.masks[usable[j]], data.fine[usable[j]]
        which = torch.randint(len(inst), (config.prompts_per_image,), generator=g).tolist()
        for w in which:
            target = (fine[w] if config.loss_size == f else inst[w]).float()
            if float(torch.rand((), generator=g)) < config.point_fraction:
                others = fine.any(0) & ~fine[w]  # [F, F]
                points.append(
                    sample_point_prompt(fine[w], others, g, config.negative_prob, config.max_negatives)
                )
                point_image.append(b)
                point_t.append(target)
            else:
                m = inst[w]
                blob = float(torch.rand((), generator=g)) < config.blob_fraction
                dense.append(blob_prompt(m, g) if blob else coarse_prompt(m, g, noise=config.coarse_noise))
                dense_image.append(b)
                dense_t.append(target)
    if points:
        coords, labels = stack_points(points, f, img_size)
    else:
        coords, labels = torch.zeros(0, 1, 2), torch.zeros(0, 1, dtype=torch.long)
    scenes = torch.tensor([usable[j] for j in pick])
    side = config.loss_size
    return Batch(
        pixels=data.pixels[scenes].float(),
        scenes=scenes,
        dense_image=torch.tensor(dense_image, dtype=torch.long),
        dense=torch.stack(dense) if dense else torch.zeros(0, s, s),
        point_image=torch.tensor(point_image, dtype=torch.long),
        coords=coords,
        labels=labels,
        targets=torch.stack(dense_t + point_t) if dense_t or point_t else torch.zeros(0, side, side),
    )


def upsample(logits: Tensor, size: int) -> Tensor:
    """SAM's postprocess: low-res mask logits [..., S, S] → [..., size, size], bilinear (identity at S)."""
    if logits.shape[-1] == size:
        return logits
    lead = logits.shape[:-2]
    x = F.interpolate(logits.reshape(-1, 1, *logits.shape[-2:]), size=(size, size), mode="bilinear",
                      align_corners=False)  # fmt: skip
    return x.view(*lead, size, size)


def batch_logits(model: TinySam, emb: Tensor, batch: Batch, previous: Tensor | None = None) -> Tensor:
    """Mask logits of every prompt of `batch` in `targets` order: [Nd + Np, S, S]. `previous` [Nd + Np, S, S]:
    a refinement pass, the previous logits as every prompt's dense mask prompt (in the dense prompts' place)."""
    out, nd = [], len(batch.dense_image)
    if nd:
        masks = batch.dense if previous is None else previous[:nd]
        sparse, dense = model.prompt_encoder(points=None, boxes=None, masks=masks[:, None])
        out.append(model._head[0].predict(emb, batch.dense_image, sparse, dense))
    if len(batch.point_image):
        masks = None if previous is None else previous[nd:, None]
        out.append(model.decode_points(emb, batch.point_image, batch.coords, batch.labels, masks))
    return torch.cat(out)


def with_error_clicks(batch: Batch, logits: Tensor, img_size: int, g: torch.Generator) -> Batch:
    """`batch` with one more click per point prompt, on the error of `logits` [Nd + Np, S, S] (upsampled to the
    targets' side) against the targets (`points.error_clicks`)."""
    nd, side = len(batch.dense_image), batch.targets.shape[-1]
    if not len(batch.point_image):
        return batch
    pred = upsample(logits[nd:].detach(), side) > 0  # [Np, L, L]
    yx, labels = error_clicks(pred, batch.targets[nd:] > 0.5, g)
    coords = torch.cat([batch.coords, to_input_coords(yx, side, img_size)[:, None]], dim=1)
    return replace(batch, coords=coords, labels=torch.cat([batch.labels, labels[:, None]], dim=1))


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


def _mask_loss(config: SamWarmupConfig, low: Tensor, targets: Tensor) -> Tensor:
    """SAM's mask loss, focal_weight·focal + dice, of low-res logits [N, S, S] upsampled to the targets' side."""
    logits = upsample(low, targets.shape[-1])  # [N, L, L]
    return (config.focal_weight * focal_per_pair(logits, targets) + dice_per_pair(logits, targets)).mean()


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
    img_size = config.encoder_config().img_size
    settings = {"desc": "tiny-SAM warm-up", "config": asdict(config)}
    checkpoint = open_loop(settings, [model, probe], LoopState(opt, sched, torch_generators=(g,)))
    with CheckpointedLoop(checkpoint, config.steps, "tiny-SAM warm-up", progress) as loop:
        for _ in loop.steps():
            batch = sample_batch(data, config, g)
            emb = model.image_encoder(batch.pixels)  # [B, 256, g, g]
            low = batch_logits(model, emb, batch)  # [N, S, S]
            loss = _mask_loss(config, low, batch.targets)
            for _ in range(config.refine_iters):
                batch = with_error_clicks(batch, low, img_size, g)
                low = batch_logits(model, emb, batch, previous=low.detach())
                loss = loss + _mask_loss(config, low, batch.targets)
            loss = loss / (1 + config.refine_iters)
            if config.attribute_weight > 0:
                loss = loss + config.attribute_weight * probe.loss(emb, *data.patch_labels(batch.scenes))
            with loop.update():
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
            loop.record(float(loss.detach()))
            loop.bar.set_postfix(loss=f"{loop.losses[-1]:.3f}")
    losses = loop.losses
    model.eval().requires_grad_(False)
    return SamTrainResult(model, losses, scene_s + loop.wall_s, scene_s)
