"""Training samples in the head's frame (image, text, SAM targets, SAM embedding) and the data cursor.

The order is a seeded permutation per epoch; the cursor (epoch, position) goes into every checkpoint, so a
resumed run draws exactly the samples an uninterrupted run would. Under DDP each process takes every
world_size-th sample of the global batch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from segcompass.data import RefDataset
from segcompass.head.image_encoder import ImageEmbeddingCache
from segcompass.head.model import SegCompassHead

logger = logging.getLogger(__name__)


@dataclass
class TrainSample:
    """One sample ready for a step (S = the head's mask side, g = its embedding grid)."""

    sample_id: str
    """`RefSample.sample_id`."""
    image: Image.Image
    """RGB image for the policy."""
    text: str
    """The sentence."""
    targets: Tensor
    """float [n, S, S] GT instances in the head's frame (n = 0 for no-target samples)."""
    embedding: Tensor
    """fp16 [256, g, g] SAM embedding of the image."""


class SampleSource:
    """Loads `RefSample`s and turns them into `TrainSample`s, memoising the last `capacity` of them."""

    def __init__(
        self,
        dataset: RefDataset,
        head: SegCompassHead,
        embedding_cache: ImageEmbeddingCache | None = None,
        capacity: int = 4096,
    ):
        if len(dataset) == 0:
            raise ValueError(f"the training data set {dataset.source}/{dataset.split} has no samples")
        self.dataset = dataset
        self.head = head
        self.cache = embedding_cache
        self.capacity = capacity
        self._memo: OrderedDict[int, TrainSample] = OrderedDict()

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices: list[int]) -> list[TrainSample]:
        """Samples at `indices` (embeddings of the missing ones computed in one encoder batch)."""
        missing = [i for i in indices if i not in self._memo]
        if missing:
            cfg = self.head.cfg
            refs = [self.dataset[i] for i in missing]
            images = [r.load_image() for r in refs]
            with torch.no_grad():
                embs = self.head.embed_images(images, self.cache)  # [m, 256, g, g] fp16
            for i, ref, image, emb in zip(missing, refs, images, embs, strict=True):
                targets, _ = ref.sam_targets(cfg.sam_encoder.img_size, cfg.heatmap_size)  # [n, S, S]
                self._memo[i] = TrainSample(ref.sample_id, image, ref.text, targets, emb.to(torch.float16))
                while len(self._memo) > self.capacity:
                    self._memo.popitem(last=False)
        for i in indices:
            self._memo.move_to_end(i)
        return [self._memo[i] for i in indices]


@dataclass
class DataCursor:
    """Where the data stream stands: epoch and position in that epoch's permutation."""

    epoch: int = 0
    """Current epoch."""
    position: int = 0
    """Samples of this epoch already drawn (globally, over all processes)."""

    def next_global_batch(self, n_samples: int, batch: int, seed: int) -> list[int]:
        """The next `batch` sample indices (crossing into the next epoch when needed)."""
        out: list[int] = []
        while len(out) < batch:
            perm = np.random.default_rng([seed, self.epoch]).permutation(n_samples)
            take = min(batch - len(out), n_samples - self.position)
            out.extend(int(i) for i in perm[self.position : self.position + take])
            self.position += take
            if self.position >= n_samples:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def shard_for_rank(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This process's share of a global batch (every world_size-th index, starting at rank)."""
    if len(indices) % world_size:
        raise ValueError(f"global batch {len(indices)} is not divisible by world size {world_size}")
    return indices[rank::world_size]
