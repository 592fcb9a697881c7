"""Scene graph and sample containers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from segcompass.world.vocab import SIZE_RANK


@dataclass(frozen=True)
class SceneObject:
    """One instance: its attributes (shape, colour, size class) and its analytic geometry."""

    id: int
    """Index of the object in `Scene.objects` (and in `WorldSample.masks`)."""
    shape: str
    """Shape name, one of `vocab.SHAPES`."""
    colour: str
    """Colour name, one of `vocab.COLOURS`."""
    size_name: str
    """Size class, one of `vocab.SIZES` ("small", "medium", "large")."""
    cx: float
    """Centre x in pixels (pixel centres sit at integer + 0.5)."""
    cy: float
    """Centre y in pixels."""
    radius: float
    """Circumradius (extent) in pixels: every point of the shape lies within this distance of the centre."""
    scale: float
    """Scale of the unit shape in pixels (equals `radius` for all shapes whose unit form has circumradius 1)."""
    area: float
    """Analytic area of the full (unoccluded) shape in square pixels."""
    z: int
    """Depth order: higher z is drawn later and occludes lower z."""
    rgb: tuple[int, int, int]
    """Base RGB actually used for the object (nominal colour plus jitter)."""

    @property
    def size_rank(self) -> int:
        """0 for small, 1 for medium, 2 for large."""
        return SIZE_RANK[self.size_name]


@dataclass(frozen=True)
class Scene:
    """A rendered scene's graph: image size, objects and a description of the background."""

    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels."""
    objects: list[SceneObject]
    """The instances, ordered by id."""
    background: str
    """Short text description of the background (style, clutter)."""


@dataclass
class WorldSample:
    """One sample: image, scene graph, visible instance masks, instruction with its targets, texts."""

    sample_id: str
    """Stable identifier "<split>-<index:06d>"."""
    split: str
    """Split name."""
    index: int
    """Index within the split."""
    image: Image.Image
    """The RGB image, size (width, height)."""
    scene: Scene
    """Scene graph."""
    masks: np.ndarray
    """Visible (occlusion-aware) instance masks, bool [N_obj, H, W], in the order of `scene.objects`."""
    instruction: str
    """The referring / reasoning instruction."""
    kind: str
    """Instruction kind: "plain", "attribute", "relational", "multi" or "no_target"."""
    target_ids: list[int]
    """Indices into `scene.objects` of the referred objects (empty for "no_target")."""
    reasoning: str
    """Deterministic step-by-step reasoning text leading from the instruction to the targets."""
    description: str
    """Deterministic scene description for image-text pretraining."""
    query: object = field(default=None, repr=False)
    """The structured query (`query.Query`) the instruction was realised from."""

    @property
    def target_mask(self) -> np.ndarray:
        """Union of the target objects' visible masks, bool [H, W] (all False for no-target samples)."""
        if not self.target_ids:
            return np.zeros(self.masks.shape[1:], dtype=bool)
        return self.masks[self.target_ids].any(axis=0)
