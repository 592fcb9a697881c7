"""Synthetic reasoning-segmentation world: procedural shape scenes with instructions and instance masks.

Scenes hold 2-8 objects (7 shapes x 7 colours x 3 sizes) on textured, cluttered backgrounds, with
occlusion (masks are the visible regions, COCO-style), distractors and images of varying size and aspect.
Each sample carries an instruction of one of five kinds ("plain", "attribute", "relational", "multi",
"no_target"), its target objects, a step-by-step reasoning text and a scene description. A sample is a pure
function of (config, split, index); splits use distinct seeds (a clash raises ValueError).

Generation::

    sample = generate_sample(WorldConfig(), split="train", index=0)   # -> WorldSample
    for s in generate_split(config, "val", 100): ...

Independent check of the answers (re-parses the instruction text): ``check_targets(text, scene)``.

Writers (each takes ``out_dir, config, splits: dict[split, n], workers=1``):

- ``write_refcoco_style``: ``images/``, COCO ``instances.json`` (RLE masks) and gRefCOCO-style
  ``grefs(unc).json`` (``ann_id`` a list, ``[-1]`` for no target, ``no_target`` flag).
- ``write_reasonseg_style``: ``{split}/<name>.jpg`` + ``<name>.json`` (``text``, ``is_sentence``,
  ``shapes`` with "target" polygons).
- ``write_image_text_corpus``: ``images/`` + ``corpus.jsonl`` (id, image, text, width, height, split,
  instruction, kind, instances with RLE masks and a ``target`` flag);
  ``load_image_text_corpus`` returns it as a ``datasets.Dataset``.

Control: ``WorldConfig(plain=True)`` gives the plain-background world; ``python -m
segcompass.world.contrast_probe`` measures how far pixel contrast alone gets on either world.
"""

from segcompass.world.checker import CheckerError, check_targets
from segcompass.world.config import WorldConfig
from segcompass.world.generate import generate_sample, generate_split
from segcompass.world.masks import decode_rle, encode_rle, mask_polygons
from segcompass.world.query import Descriptor, Query
from segcompass.world.scene import Scene, SceneObject, WorldSample
from segcompass.world.vocab import COLOURS, KINDS, SHAPES, SIZES
from segcompass.world.write_corpus import load_image_text_corpus, write_image_text_corpus
from segcompass.world.write_reasonseg import write_reasonseg_style
from segcompass.world.write_refcoco import write_refcoco_style

__all__ = [
    "COLOURS",
    "KINDS",
    "SHAPES",
    "SIZES",
    "CheckerError",
    "Descriptor",
    "Query",
    "Scene",
    "SceneObject",
    "WorldConfig",
    "WorldSample",
    "check_targets",
    "decode_rle",
    "encode_rle",
    "generate_sample",
    "generate_split",
    "load_image_text_corpus",
    "mask_polygons",
    "write_image_text_corpus",
    "write_reasonseg_style",
    "write_refcoco_style",
]
