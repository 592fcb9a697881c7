"""What SegCompass needs to know about a multimodal LLM family.

A `BackboneFamily` is the one place that knows, for Qwen2.5-VL or LLaVA-1.5: how to load a checkpoint from
a hub id or a local folder, where the decoder layers live, how to build the processor and the chat prompt,
how visual tokens map back to pixels, and how to build a tiny random-weight preset offline.

Hook-layer convention (docs/design.md §4): the hook layer L is an index into HF `hidden_states`, where 0 is the
embedding output and L ≥ 1 is the output of decoder block L − 1. Valid hook layers are 1 … num_layers − 1:
the last entry of `hidden_states` has the final norm applied and is not a residual-stream state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, AutoProcessor, PreTrainedModel, ProcessorMixin

from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType


@dataclass(frozen=True)
class KnownCheckpoint:
    """A released checkpoint of a family and the settings the paper uses for it."""

    hub_id: str
    """Hugging Face hub id."""
    hook_layer: int
    """Default hook layer (HF `hidden_states` index)."""
    hidden_size: int
    """Residual-stream width d_in."""
    num_layers: int
    """Number of decoder blocks."""


@dataclass(frozen=True)
class PromptText:
    """A chat prompt as text plus the character spans of its parts (before image-token expansion)."""

    text: str
    """The prompt, with one image placeholder per image."""
    spans: tuple[tuple[int, int, TokenType], ...]
    """(start, end, type) character spans covering `text`; the image placeholder's span has type IMAGE."""

    @classmethod
    def from_parts(cls, parts: list[tuple[str, TokenType]]) -> PromptText:
        """Concatenate (text, type) parts, recording where each one lies."""
        spans, pos = [], 0
        for text, kind in parts:
            spans.append((pos, pos + len(text), kind))
            pos += len(text)
        return cls(text="".join(t for t, _ in parts), spans=tuple(spans))


@dataclass
class TinySpec:
    """Sizes of a tiny random-weight preset (tests, demos, the synthetic world)."""

    hidden_size: int = 128
    """Text model width."""
    num_layers: int = 4
    """Decoder blocks."""
    num_heads: int = 4
    """Attention heads (head_dim = hidden_size / num_heads)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = 256
    """MLP width."""
    vision_hidden_size: int = 64
    """Vision tower width."""
    vision_layers: int = 4
    """Vision tower blocks."""
    image_size: int = 112
    """Nominal image side the processor targets, in pixels."""
    min_pixels: int = 0
    """Fewest pixels of a resized image (Qwen's processor scales smaller images up); 0: (image_size / 2)²."""
    rope_theta: float = 20.0
    """Small rotary base: with the default 1e4 a 4×4 grid's positions barely rotate (docs/design.md §7)."""
    hook_layer: int = 2
    """Default hook layer of the preset."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Family-specific overrides (Qwen2.5-VL: ``text_config`` / ``vision_config`` dicts merged into the
    built config, e.g. the vision tower's real head count for a full-size shape check)."""


class BackboneFamily(ABC):
    """Family-level knowledge; stateless. Subclasses are registered in `registry.py`."""

    name: str
    """Short name used on the command line (`qwen2_5_vl`, `llava`)."""
    model_types: tuple[str, ...]
    """HF `config.model_type` values this family handles."""
    image_placeholder: str
    """The text placeholder for one image in a prompt, before the processor expands it."""
    image_token: str
    """The token that fills each visual-token position after expansion."""
    known_checkpoints: tuple[KnownCheckpoint, ...] = ()

    # ---- loading -------------------------------------------------------------------------------
    @abstractmethod
    def model_class(self) -> type[PreTrainedModel]:
        """The transformers class for `from_pretrained`."""

    def load_processor(self, name_or_path: str) -> ProcessorMixin:
        """Processor of a hub id or local folder, with the PIL image backend.

        The torchvision backend is ~100× slower on CPU for small images (docs/design.md §7); the two give the
        same pixel values.
        """
        image_processor = AutoImageProcessor.from_pretrained(name_or_path, backend="pil")
        processor = AutoProcessor.from_pretrained(name_or_path, image_processor=image_processor)
        # transformers copies the keyword into the tokenizer's init kwargs, which would make a later
        # save_pretrained fail (an image processor is not JSON): keep it out.
        processor.tokenizer.init_kwargs.pop("image_processor", None)
        return processor

    # ---- structure -----------------------------------------------------------------------------
    @abstractmethod
    def decoder_layers(self, model: PreTrainedModel) -> nn.ModuleList:
        """The language model's decoder blocks."""

    @abstractmethod
    def text_config(self, model: PreTrainedModel) -> Any:
        """The language model's config (hidden_size, num_hidden_layers, ...)."""

    def default_hook_layer(self, name_or_path: str, num_layers: int) -> int:
        """The paper's hook layer for a known checkpoint, else the middle of the stack."""
        for ckpt in self.known_checkpoints:
            if name_or_path.rstrip("/").endswith(ckpt.hub_id) and ckpt.num_layers == num_layers:
                return ckpt.hook_layer
        return max(1, num_layers // 2)

    # ---- prompts and images ------------------------------------------------------------------------
    @abstractmethod
    def chat_prompt(
        self, instruction: str, *, image_first: bool = True, system: str | None = None
    ) -> PromptText:
        """The generation prompt for one image and one instruction, ending where the assistant speaks.

        `image_first=False` puts the instruction before the image, so that image tokens can attend to
        it in a causal LM (docs/design.md §9).
        """

    @abstractmethod
    def image_geometries(
        self, processor: ProcessorMixin, images: list[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> list[ImageGeometry]:
        """Geometry of every image, in the order the processor received them."""

    def model_inputs(self, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The subset of the processor output the model's forward takes."""
        return {k: v for k, v in encoded.items() if k != "offset_mapping"}

    # ---- tiny presets --------------------------------------------------------------------------
    @abstractmethod
    def build_tiny(self, spec: TinySpec, seed: int) -> tuple[PreTrainedModel, ProcessorMixin]:
        """A random-weight model and an offline processor with SegCompass's special tokens."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
