"""What `sae` needs from a backbone, without importing `segcompass` (dependencies point one way).

`segcompass.backbones.Backbone` satisfies `CaptureBackbone`. A backbone named on the command line
(`tiny:qwen2_5_vl`, a folder, a hub id) is resolved through the `segcompass.backbone_resolver` entry point,
which `segcompass` registers; another package can register its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .image_geometry import ImageGeometry

RESOLVER_GROUP = "segcompass.backbone_resolver"


@runtime_checkable
class PreparedInputs(Protocol):
    """A processed batch: model inputs plus what each position is (see `segcompass.backbones.PreparedBatch`)."""

    inputs: Any  # mapping of model forward kwargs
    token_types: torch.Tensor  # [B, T] TokenType values
    image_rc: torch.Tensor  # [B, T, 2]
    geometries: list[ImageGeometry]
    response_start: torch.Tensor  # [B]


@runtime_checkable
class CaptureBackbone(Protocol):
    """A multimodal LLM with a hook layer and a batch-preparation method."""

    model: nn.Module
    processor: Any
    hook_layer: int
    name_or_path: str

    @property
    def decoder_layers(self) -> nn.ModuleList: ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def num_layers(self) -> int: ...

    def prepare(
        self,
        images: Sequence[Any],
        instructions: Sequence[str],
        responses: Sequence[str] | None = None,
        *,
        image_first: bool = True,
        system: str | None = None,
    ) -> PreparedInputs: ...


def resolve_backbone(spec: str, **kwargs: Any) -> CaptureBackbone:
    """Load the backbone named by `spec` through the registered resolver (`segcompass` provides one)."""
    resolvers = list(entry_points(group=RESOLVER_GROUP))
    if not resolvers:
        raise RuntimeError(f"no backbone resolver is installed (entry-point group {RESOLVER_GROUP!r})")
    return resolvers[0].load()(spec, **kwargs)
