"""Configuration of the synthetic world and the per-sample seeding scheme."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from segcompass.world.vocab import KINDS


def _default_split_seeds() -> dict[str, int]:
    return {"train": 0, "val": 1, "test": 2}


def _default_kind_weights() -> dict[str, float]:
    return {"plain": 0.25, "attribute": 0.2, "relational": 0.2, "multi": 0.2, "no_target": 0.15}


@dataclass
class WorldConfig:
    """Everything that decides what the world generates; a sample is a pure function of (config, split, index)."""

    seed: int = 0
    """Base seed shared by all splits; each split adds its own split seed."""
    split_seeds: dict[str, int] = field(default_factory=_default_split_seeds)
    """Seed of each named split; the values must be distinct so that splits never share samples."""
    min_side: int = 160
    """Smallest image width / height in pixels."""
    max_side: int = 320
    """Largest image width / height in pixels."""
    max_aspect: float = 1.6
    """Largest allowed ratio of the longer to the shorter image side."""
    min_objects: int = 2
    """Fewest objects (instances) per scene."""
    max_objects: int = 8
    """Most objects per scene (fewer may be placed when the visibility constraints cannot be met)."""
    kind_weights: dict[str, float] = field(default_factory=_default_kind_weights)
    """Probability of each instruction kind (normalised); kinds missing here are never drawn."""
    plain: bool = False
    """Plain-background control world: uniform light background, no clutter, flat-coloured objects."""
    clutter_range: tuple[int, int] = (4, 10)
    """Inclusive range of the number of non-instance clutter items painted into the background."""
    min_visible_fraction: float = 0.5
    """Every object keeps at least this fraction of its area visible under occlusion."""
    max_cover_fraction: float = 0.75
    """Upper bound of the summed analytic object area as a fraction of the image area."""
    image_format: str = "JPEG"
    """Format of images written to disk: "JPEG" (quality `jpeg_quality`) or "PNG"."""
    jpeg_quality: int = 95
    """JPEG quality used by the writers."""

    def __post_init__(self) -> None:
        check_split_seeds(self.split_seeds)
        unknown = set(self.kind_weights) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown instruction kinds {sorted(unknown)}; known kinds are {list(KINDS)}")
        if not any(w > 0 for w in self.kind_weights.values()):
            raise ValueError("kind_weights must give at least one kind a positive weight")
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError(f"need 16 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.image_format not in ("JPEG", "PNG"):
            raise ValueError(f"image_format must be 'JPEG' or 'PNG', got {self.image_format!r}")


def check_split_seeds(split_seeds: dict[str, int]) -> None:
    """Raise ValueError when two splits share a seed (their samples would coincide)."""
    owners: dict[int, str] = {}
    for split, seed in split_seeds.items():
        if seed in owners:
            raise ValueError(
                f"split seed clash: splits {owners[seed]!r} and {split!r} both use seed {seed}; "
                "splits must have distinct seeds so that they never share samples"
            )
        owners[seed] = split


def resolve_split_seed(config: WorldConfig, split: str, seed: int | None = None) -> int:
    """The seed of `split`: the configured one, or a custom `seed` that must not belong to another split."""
    if seed is None:
        if split not in config.split_seeds:
            raise ValueError(
                f"unknown split {split!r}: add it to WorldConfig.split_seeds "
                f"(known: {sorted(config.split_seeds)}) or pass an explicit seed"
            )
        return config.split_seeds[split]
    for other, other_seed in config.split_seeds.items():
        if other != split and other_seed == seed:
            raise ValueError(
                f"split seed clash: custom seed {seed} for split {split!r} is the seed of split {other!r}; "
                "choose a seed no other split uses"
            )
    return seed


def sample_rng(config: WorldConfig, split: str, index: int, seed: int | None = None) -> np.random.Generator:
    """Random generator of sample `index` of `split`, keyed by a hash of (base seed, split, split seed, index)."""
    split_seed = resolve_split_seed(config, split, seed)
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    digest = hashlib.sha256(f"segcompass-world|{config.seed}|{split}|{split_seed}".encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([*words, index]))
