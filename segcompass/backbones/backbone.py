"""A loaded backbone: model + processor + family knowledge + the hook layer, and batch preparation."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature, PreTrainedModel, ProcessorMixin

from sae.image_geometry import ImageGeometry
from sae.images import as_rgb

from .family import BackboneFamily, PromptText
from .labeling import label_positions
from .tokenizer import REASONING_TOKENS

logger = logging.getLogger(__name__)

METADATA_FILE = "segcompass.json"
"""Written beside `config.json` by `Backbone.save`: family, hook layer and preset of a saved backbone."""


@dataclass
class PreparedBatch:
    """Model inputs for a batch of (image, instruction[, response]) plus what every position is.

    B = batch size, T = padded sequence length.
    """

    inputs: BatchFeature
    """Keyword arguments for the model's forward / generate (input_ids, attention_mask, pixel_values, ...)."""
    token_types: torch.Tensor
    """int64 [B, T]: a `TokenType` per position (PAD where attention_mask is 0)."""
    image_rc: torch.Tensor
    """int64 [B, T, 2]: (row, col) of each image token in its image's token grid; −1 elsewhere."""
    geometries: list[ImageGeometry]
    """One per sample: how its image tokens map to pixels."""
    response_start: torch.Tensor
    """int64 [B]: index of the first response position (T when no response was given)."""
    prompts: list[PromptText]
    """The chat prompts, before image-token expansion."""


@dataclass
class Backbone:
    """A multimodal LLM ready for SegCompass: use `load_backbone` or `build_tiny` to make one."""

    model: PreTrainedModel
    """The Hugging Face model (`...ForConditionalGeneration`)."""
    processor: ProcessorMixin
    """Its processor (tokenizer + PIL image processor)."""
    family: BackboneFamily
    """Family-level knowledge (prompt format, layer paths, geometry)."""
    hook_layer: int
    """HF `hidden_states` index the SAE reads (0 = embeddings, L = output of block L − 1)."""
    name_or_path: str
    """Where it came from: a hub id, a local folder, or `tiny:<family>`."""

    def __post_init__(self) -> None:
        self.hook_layer = validate_hook_layer(self.hook_layer, self.num_layers, self.name_or_path)
        use_left_padding(self.tokenizer, self.name_or_path)

    # ---- structure -----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.family.decoder_layers(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.family.text_config(self.model).hidden_size)

    @property
    def device(self) -> torch.device:
        """Device of the model's input embeddings (where `generate` and the forward take their inputs)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(self.family.image_token))

    @property
    def reasoning_token_ids(self) -> dict[str, int]:
        """Ids of `<think>`, `</think>` and `<REF_POS>`."""
        return {t: int(self.tokenizer.convert_tokens_to_ids(t)) for t in REASONING_TOKENS}

    # ---- inputs --------------------------------------------------------------------------------
    def prepare(
        self,
        images: list[Image.Image],
        instructions: list[str],
        responses: list[str] | None = None,
        *,
        image_first: bool = True,
        system: str | None = None,
    ) -> PreparedBatch:
        """Tokenise a batch (left-padded) and label every position with its `TokenType`.

        `responses`, when given, are appended after each prompt (teacher forcing, e.g. a CoT ending in
        concentration tokens); their positions are labelled COT / CONCENTRATION / RESPONSE / SPECIAL.
        """
        if len(images) != len(instructions) or (responses is not None and len(responses) != len(images)):
            raise ValueError(
                f"batch mismatch: {len(images)} images, {len(instructions)} instructions"
                + ("" if responses is None else f", {len(responses)} responses")
            )
        for i, text in enumerate(instructions):
            if not text or not text.strip():
                raise ValueError(f"instruction {i} is empty")
        images = [_as_rgb(im, i) for i, im in enumerate(images)]
        prompts = [self.family.chat_prompt(t, image_first=image_first, system=system) for t in instructions]
        texts = [p.text + (responses[i] if responses else "") for i, p in enumerate(prompts)]
        encoded = self.processor(
            images=images, text=texts, return_tensors="pt", padding=True, return_offsets_mapping=True
        )
        if not bool(encoded["attention_mask"][:, -1].all()):
            raise RuntimeError(
                f"{self.name_or_path}: the batch is right-padded (tokenizer.padding_side="
                f"{self.tokenizer.padding_side!r}); SegCompass needs left padding for batched generation and "
                "labelling — do not change the padding side of a Backbone's tokenizer"
            )
        geometries = self.family.image_geometries(self.processor, images, encoded)
        token_types, image_rc, response_start = label_positions(
            encoded, prompts, responses, geometries, self.image_token_id, self.tokenizer
        )
        inputs = BatchFeature(self.family.model_inputs(encoded))
        return PreparedBatch(inputs, token_types, image_rc, geometries, response_start, prompts)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, state_dict: dict | None = None) -> Path:
        """`save_pretrained` the model and processor plus `segcompass.json`; loads back with `load_backbone`.

        `state_dict` replaces the model's own (e.g. LoRA-merged weights under the plain names)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, state_dict=state_dict)
        self.processor.save_pretrained(path)
        meta = {"family": self.family.name, "hook_layer": self.hook_layer, "source": self.name_or_path}
        tmp = path / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, path / METADATA_FILE)
        return path


def use_left_padding(tokenizer, name: str = "backbone") -> None:
    """Make `tokenizer` pad on the left, whatever its saved config says (the one place, for every family).

    Decoder-only generation appends after the last position, so a right-padded batch generates after its
    pad tokens and differs from one-by-one generation; released tokenizer configs (Qwen2.5-VL's among
    them) do not say "left", so transformers' default "right" would apply.
    """
    if tokenizer.padding_side != "left":
        logger.info("%s: tokenizer padding side %r -> 'left'", name, tokenizer.padding_side)
        tokenizer.padding_side = "left"


def validate_hook_layer(hook_layer: int, num_layers: int, name: str = "backbone") -> int:
    """Check 1 ≤ L ≤ num_layers − 1 (HF `hidden_states` indexing) and return L."""
    if not isinstance(hook_layer, int) or isinstance(hook_layer, bool):
        raise TypeError(f"hook layer must be an int, got {hook_layer!r}")
    if not 1 <= hook_layer <= num_layers - 1:
        raise ValueError(
            f"hook layer {hook_layer} is out of range for {name} with {num_layers} decoder layers: "
            f"valid hook layers are 1..{num_layers - 1} (HF hidden_states index; 0 = embeddings, "
            f"L = output of block L-1; the last entry is normed and not a residual-stream state)"
        )
    return hook_layer


def _as_rgb(image: Image.Image, index: int) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"image {index} is a {type(image).__name__}, expected a PIL image")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image {index} is empty ({image.width}x{image.height})")
    return as_rgb(image)  # alpha over white and 16-bit scaled, as every image SegCompass opens
