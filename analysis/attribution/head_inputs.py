"""`HeadInputs`: a generic record of one batch of model inputs for the head, plus what the analyses show.

Attribution, the causal check and the provenance report only need what `SegCompassHead.forward` takes
(hook-layer states, concentration states, SAM image embeddings, optionally a token mask and a precomputed
prefix support) and, for display, each sample's token labels and image. Whatever produces them — the
default pipeline's policy rollout, a trained model's `load_model`, a test — fills this record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from analysis.attribution.support_filter import SupportFn, transformed_support
from sae.image_geometry import ImageGeometry
from segcompass.head.outputs import HeadOutput
from segcompass.head.support import ConceptSupport


@dataclass
class TokenInfo:
    """What each sequence position of one sample is (T = the hook states' sequence length)."""

    token_type: np.ndarray
    """int [T] `TokenType` values."""
    image_rc: np.ndarray
    """int [T, 2] image-grid (row, col), −1 for non-image positions."""
    geometry: ImageGeometry | None = None
    """How the image tokens map to pixels."""
    text: list[str] | None = None
    """Decoded text of each position, when known."""

    @classmethod
    def from_prepared(cls, batch: Any, index: int, tokenizer: Any = None) -> TokenInfo:
        """Sample `index` of a backbone's `PreparedBatch` (token strings decoded when a tokenizer is given)."""
        text = None
        if tokenizer is not None:
            ids = batch.inputs["input_ids"][index].tolist()
            text = [tokenizer.decode([i]) for i in ids]
        return cls(
            np.asarray(batch.token_types[index]),
            np.asarray(batch.image_rc[index]),
            batch.geometries[index],
            text,
        )


@dataclass
class HeadInputs:
    """B samples of head inputs (T = sequence length of the hook states, D = LLM width, S = 256)."""

    hook_states: Tensor
    """[B, T, D] hook-layer states (HF hidden_states[L]), the SAE's input."""
    concentration_states: Tensor
    """[B, K, D] last-layer concentration-token states (see `SegCompassHead.forward` for other modes)."""
    image_embeddings: Tensor
    """[B, 256, 64, 64] SAM image embeddings."""
    concept_token_mask: Tensor | None = None
    """[B, T] bool: tokens whose concepts enter the head (None: all)."""
    prefix_support: ConceptSupport | None = None
    """Precomputed support of tokens outside `concept_token_mask` (see `SegCompassHead.forward`)."""
    targets: list[Tensor] | None = None
    """Optional B GT tensors [N_b, S, S] in the head's frame (for IoU against GT)."""
    tokens: list[TokenInfo] | None = None
    """Optional per-sample token labels (type, image (row, col), geometry, text) for display."""
    images: list[np.ndarray] | None = None
    """Optional per-sample original images, uint8 [H, W, 3], for display."""
    sample_ids: list[str] | None = None
    """Optional per-sample ids (default: the sample's index)."""

    def __post_init__(self) -> None:
        b = self.batch_size
        for name in ("concentration_states", "image_embeddings"):
            n = getattr(self, name).shape[0]
            if n != b:
                raise ValueError(f"HeadInputs.{name} has {n} samples but hook_states has {b}")
        for name in ("targets", "tokens", "images", "sample_ids"):
            seq = getattr(self, name)
            if seq is not None and len(seq) != b:
                raise ValueError(f"HeadInputs.{name} has {len(seq)} entries for a batch of {b}")
        if self.prefix_support is not None and self.prefix_support.batch_size != b:
            raise ValueError(
                f"HeadInputs.prefix_support has batch size {self.prefix_support.batch_size}, expected {b}"
            )

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.hook_states.shape[0])

    def sample_id(self, b: int) -> str:
        """The id of sample `b` (its index when no ids were given)."""
        return self.sample_ids[b] if self.sample_ids is not None else str(b)

    def select(self, indices: Sequence[int]) -> HeadInputs:
        """The samples at `indices` (repeats allowed), as a new batch."""
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < self.batch_size:
                raise ValueError(f"sample index {i} is out of range for a batch of {self.batch_size}")

        def pick(seq):
            return None if seq is None else [seq[i] for i in idx]

        return HeadInputs(
            self.hook_states[idx],
            self.concentration_states[idx],
            self.image_embeddings[idx],
            None if self.concept_token_mask is None else self.concept_token_mask[idx],
            None
            if self.prefix_support is None
            else ConceptSupport.stack([self.prefix_support.sample(i) for i in idx]),
            pick(self.targets),
            pick(self.tokens),
            pick(self.images),
            [self.sample_id(i) for i in idx],
        )

    def forward(self, head: nn.Module, transform: SupportFn | None = None) -> HeadOutput:
        """`head(...)` on this batch with the support transformed by `transform` (no targets, no losses).

        The transform applies to the freshly encoded support (inside the concept interface) and to the
        precomputed prefix support alike.
        """
        prefix = self.prefix_support
        if prefix is not None and transform is not None:
            prefix = transform(prefix)
        with transformed_support(head, transform):
            return head(
                self.hook_states,
                self.concept_token_mask,
                self.concentration_states,
                self.image_embeddings,
                prefix_support=prefix,
            )
