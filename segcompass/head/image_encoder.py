"""SAM ViT image encoder (frozen) and an on-disk cache of its image embeddings.

Weights come from a checkpoint path the user gives (segment-anything `.pth` read with
`torch.load(weights_only=True)`, or `.safetensors`); without one the encoder is randomly initialised.
Embeddings are cached as fp16 [256, 64, 64] safetensors files keyed by the image's content hash and the
encoder's identity, written atomically (temporary file + os.replace).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from segment_anything.modeling import ImageEncoderViT
from torch import Tensor, nn

from sae.files import atomic_write

from .config import SamEncoderConfig
from .preprocess import as_uint8_hwc, preprocess_image

logger = logging.getLogger(__name__)


def load_sam_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a SAM state dict from `.safetensors` or a torch file (loaded with weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    sd = torch.load(str(p), map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping):
        raise TypeError(f"{p} does not hold a state dict (got {type(sd).__name__})")
    return dict(sd)


def build_sam_image_encoder(
    cfg: SamEncoderConfig, checkpoint: str | os.PathLike[str] | None = None
) -> ImageEncoderViT:
    """segment-anything `ImageEncoderViT` of shape `cfg`, frozen, in eval mode.

    Args:
        checkpoint: a full SAM checkpoint (its `image_encoder.*` entries are used) or an encoder-only one.
    """
    enc = ImageEncoderViT(
        depth=cfg.depth,
        embed_dim=cfg.embed_dim,
        img_size=cfg.img_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=cfg.num_heads,
        patch_size=cfg.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=cfg.global_attn_indexes,
        window_size=cfg.window_size,
        out_chans=cfg.out_chans,
    )
    if checkpoint is not None:
        sd = load_sam_checkpoint(checkpoint)
        if any(k.startswith("image_encoder.") for k in sd):
            sd = {
                k.removeprefix("image_encoder."): v for k, v in sd.items() if k.startswith("image_encoder.")
            }
        enc.load_state_dict(sd)
        logger.info("loaded SAM image encoder weights from %s", checkpoint)
    enc.requires_grad_(False)
    return enc.eval()


def image_content_hash(image: Image.Image | np.ndarray | Tensor) -> str:
    """sha256 over the RGB pixels and their shape."""
    arr = np.ascontiguousarray(as_uint8_hwc(image))
    h = hashlib.sha256(f"{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class ImageEmbeddingCache:
    """Cache of SAM image embeddings on disk.

    Args:
        encoder: the frozen SAM image encoder.
        cache_dir: directory for the files (None: no disk cache, embeddings are computed each time).
        encoder_tag: identity of the encoder weights in the key (e.g. the checkpoint name); use a
            different tag for different weights, or stale embeddings would be reused.
        batch_size: images per encoder forward on a miss.
    """

    def __init__(
        self,
        encoder: nn.Module,
        cache_dir: str | os.PathLike[str] | None,
        encoder_tag: str,
        img_size: int = 1024,
        batch_size: int = 4,
    ):
        self.encoder = encoder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.encoder_tag = encoder_tag
        self.img_size = img_size
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        """File of the embedding with content key `key`."""
        assert self.cache_dir is not None
        tag = hashlib.sha256(self.encoder_tag.encode()).hexdigest()[:16]
        return self.cache_dir / tag / key[:2] / f"{key}.safetensors"

    def _write(self, path: Path, emb: Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"encoder_tag": self.encoder_tag}
        atomic_write(path, lambda tmp: save_file({"embedding": emb.contiguous()}, str(tmp), metadata=meta))

    @torch.no_grad()
    def _encode(self, images: Sequence[Image.Image | np.ndarray | Tensor]) -> Tensor:
        device = next(self.encoder.parameters()).device
        x = torch.stack([preprocess_image(im, self.img_size).pixels for im in images]).to(device)
        return self.encoder(x).to(torch.float16).cpu()  # [n, 256, g, g]

    def embed(self, images: Sequence[Image.Image | np.ndarray | Tensor]) -> Tensor:
        """fp16 embeddings [B, 256, g, g] of `images`, from disk where cached."""
        out: list[Tensor | None] = [None] * len(images)
        keys = [image_content_hash(im) for im in images]
        missing = []
        for i, key in enumerate(keys):
            path = self.path_for(key) if self.cache_dir is not None else None
            if path is not None and path.is_file():
                out[i] = load_file(str(path))["embedding"]
                self.hits += 1
            else:
                missing.append(i)
        for start in range(0, len(missing), self.batch_size):
            idx = missing[start : start + self.batch_size]
            embs = self._encode([images[i] for i in idx])
            for i, emb in zip(idx, embs, strict=True):
                out[i] = emb
                self.misses += 1
                if self.cache_dir is not None:
                    self._write(self.path_for(keys[i]), emb)
        return torch.stack([o for o in out if o is not None])
