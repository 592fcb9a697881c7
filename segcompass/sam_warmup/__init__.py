"""Tiny-SAM warm-up: the CPU stand-in for SAM's pretrained weights.

Real SAM brings class-agnostic objectness from SA-1B; the tiny SAM geometry of the CPU head (256² input →
16² grid → 64² low-res masks, upsampled bilinearly to 128² as SAM's postprocess does) has no such
checkpoint. `tiny_sam()` trains one with SAM's promptable objective on synthetic-world scenes (point prompts
and dense mask prompts → the instance's mask, 20·focal + dice), evaluates it on held-out scenes at 128²
(`evaluate.py`: interior point and coarse heatmap prompts) beside a random-init control and the prompt
alone, and caches a SAM-format checkpoint that the head loads through the same `load_sam_weights` path as a
real SAM file::

    art = tiny_sam()                                       # built once if missing, then read from the cache
    head = build_head(cfg, sae, image_encoder=True, sam_checkpoint=art.checkpoint)

No instruction, colour or shape name is seen: the warm-up is class-agnostic, like SAM's.
"""

from .cache import SAM_STAGE, SamWarmupArtifact, ensure_sam, resolve_sam, sam_folder, tiny_sam
from .config import SAM_WARMUP_VERSION, SamWarmupConfig
from .train import TinySam

__all__ = [
    "SAM_STAGE",
    "SAM_WARMUP_VERSION",
    "SamWarmupArtifact",
    "SamWarmupConfig",
    "TinySam",
    "ensure_sam",
    "resolve_sam",
    "sam_folder",
    "tiny_sam",
]
