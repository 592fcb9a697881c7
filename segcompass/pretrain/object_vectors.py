"""Scenes as one vector per object, in the image tokens' place: the image's look-up without a tower.

An image token of a tower that sees carries its object's colour, shape, size and place together, so "What
colour is the star?" about an image is one hop: attend to the tokens that match "star", read their colour.
In words the same scene spreads each object over several tokens ("a medium blue star at the top"), and the
look-up first needs the colour bound to its shape — the previous-token step the tiny language model is slow to
learn (results/warmup.md). Here each object of a scene is ONE input vector, the sum of the language model's
own embeddings of its words (colour, shape, size, 3 × 3 position; a word of several tokens counts as the mean
of its tokens), laid out as a 1 × n image grid, object j on cell j. The dialogues, the batches
(`encode_dialogues`), the losses (`answer_loss`), the scoring (`score_candidates`) and the grounding targets
(`grounding_targets`: object j covers cell j) are the image path's own; `ObjectVectorCache` stands where the
`FeatureCache` of a tower's image tokens stands.

Stage 0 can train the look-up on it before any image is seen: with the grounding objective on layers 2–3 the
answers follow the named object on whole scenes (colour 0.95, shape 0.90 after 2000 steps of 128), where in
words they do not (results/warmup.md, session (4); `scripts/object_vector_probe.py`).

The same cache lays the vectors on a real image's token grid (`ScenePool` entries): each token the vector
of the object covering at least half of it, 0 on the background — the image tokens of an ideal tower
("oracle tokens"). A language model trained on them meets the image layout (several tokens per object,
background between them, the image's 2-D rotary positions) before any tower exists, and the oracle tokens
are the regression target that aligns a real tower's tokens to what the model reads (`align.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from segcompass.backbones import Backbone
from segcompass.world.language import location_words
from segcompass.world.scene import SceneObject, WorldSample

from .labels import covering_object

if TYPE_CHECKING:
    from .pool import PooledScene, ScenePool


def object_words(obj: SceneObject, width: int, height: int) -> list[str]:
    """The words an object's vector sums: colour, shape, size and the words of its 3 × 3 position."""
    return [obj.colour, obj.shape, obj.size_name, *location_words(obj, width, height).split()]


@dataclass(frozen=True)
class ObjectScene:
    """A pool entry for a scene given as object vectors (what `encode_dialogues` and `grounding_targets`
    read of a pool entry)."""

    sample: WorldSample
    grid: tuple[int, int]
    """(1, n): one image-token cell per object."""
    coverage: np.ndarray
    """float32 [n, 1, n]: object j covers cell j, and nothing else."""

    @classmethod
    def of(cls, sample: WorldSample) -> ObjectScene:
        n = len(sample.scene.objects)
        if n == 0:
            raise ValueError("a scene given as object vectors needs at least one object")
        return cls(sample, (1, n), np.eye(n, dtype=np.float32)[:, None, :])


class ObjectVectorCache:
    """`FeatureCache`'s interface for a pool of scenes given by their objects' vectors: `get(indices)` → one
    [cells_i, D] tensor per scene, each cell the vector of the object covering at least half of it (0 where
    none does), made from the language model's current input embeddings (detached: the vectors follow the
    embeddings as they train, the loss does not reach them through this path).

    Pool entries are `ObjectScene`s (cell j = object j) or any entry with `sample`, `grid` and `coverage`
    [n_obj, rows, cols] — a `ScenePool`'s scenes give the oracle tokens of their images."""

    live_merger = False

    def __init__(
        self, backbone: Backbone, pool: Sequence[ObjectScene] | ScenePool, scale: float = 1.0
    ) -> None:
        self.backbone, self.pool, self.scale = backbone, pool, scale
        self._word_ids: dict[str, list[int]] = {}

    def word_ids(self, word: str) -> list[int]:
        """Token ids of " word" (the word as it reads inside a sentence)."""
        if word not in self._word_ids:
            self._word_ids[word] = self.backbone.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        return self._word_ids[word]

    @torch.no_grad()
    def vectors(self, sample: WorldSample) -> torch.Tensor:
        """float [n, D]: each object's vector, Σ over its words of the mean embedding of the word's tokens."""
        table = self.backbone.model.get_input_embeddings().weight
        scene = sample.scene
        rows = [
            torch.stack(
                [table[self.word_ids(w)].mean(0) for w in object_words(o, scene.width, scene.height)]
            ).sum(0)
            for o in scene.objects
        ]
        return self.scale * torch.stack(rows)

    def tokens(self, entry: ObjectScene | PooledScene) -> torch.Tensor:
        """float [cells, D]: the entry's cells in raster order, each its covering object's vector or 0."""
        vectors = self.vectors(entry.sample)  # [n, D]
        owner = torch.from_numpy(covering_object(entry.coverage))  # [cells], −1 on background / mixed
        out = vectors.new_zeros(len(owner), vectors.shape[1])
        out[owner >= 0] = vectors[owner[owner >= 0]]
        return out

    def get(self, indices: list[int]) -> list[torch.Tensor]:
        return [self.tokens(self.pool[i]) for i in indices]
