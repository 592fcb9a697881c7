"""Qwen2.5-VL: native-resolution vision tower, 2×2 patch merger, multimodal rotary positions."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import (
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
    Qwen2VLVideoProcessor,
)

from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType

from .family import BackboneFamily, KnownCheckpoint, PromptText, TinySpec
from .tokenizer import build_tiny_tokenizer

_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_DEFAULT_SYSTEM = "You are a helpful assistant."


class Qwen25VLFamily(BackboneFamily):
    """Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`)."""

    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    image_placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    image_token = "<|image_pad|>"
    known_checkpoints = (
        KnownCheckpoint("Qwen/Qwen2.5-VL-7B-Instruct", hook_layer=13, hidden_size=3584, num_layers=28),
    )

    def model_class(self) -> type[PreTrainedModel]:
        return Qwen2_5_VLForConditionalGeneration

    def decoder_layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return model.model.language_model.layers

    def text_config(self, model: PreTrainedModel) -> Any:
        return model.config.text_config

    def chat_prompt(
        self, instruction: str, *, image_first: bool = True, system: str | None = None
    ) -> PromptText:
        parts: list[tuple[str, TokenType]] = [
            (
                f"<|im_start|>system\n{system or _DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n",
                TokenType.SPECIAL,
            ),
        ]
        image = [
            ("<|vision_start|>", TokenType.SPECIAL),
            ("<|image_pad|>", TokenType.IMAGE),
            ("<|vision_end|>", TokenType.SPECIAL),
        ]
        text = [(instruction, TokenType.INSTRUCTION)]
        parts += image + text if image_first else text + image
        parts.append(("<|im_end|>\n<|im_start|>assistant\n", TokenType.SPECIAL))
        return PromptText.from_parts(parts)

    def image_geometries(
        self, processor: ProcessorMixin, images: list[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> list[ImageGeometry]:
        grid_thw = inputs["image_grid_thw"].tolist()  # [n_images, 3] in patches: (t, h, w)
        patch = processor.image_processor.patch_size
        merge = processor.image_processor.merge_size
        out = []
        for image, (_, gh, gw) in zip(images, grid_thw, strict=True):
            out.append(
                ImageGeometry(
                    original_size=(image.height, image.width),
                    resized_size=(gh * patch, gw * patch),
                    crop_top_left=(0, 0),
                    grid=(gh // merge, gw // merge),
                    cell_size=patch * merge,
                )
            )
        return out

    def build_tiny(self, spec: TinySpec, seed: int) -> tuple[PreTrainedModel, ProcessorMixin]:
        tokenizer = build_tiny_tokenizer(_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tid = tokenizer.convert_tokens_to_ids
        head_dim = spec.hidden_size // spec.num_heads
        # mrope splits head_dim/2 rotary frequencies over (time, row, col); the real model uses 16/24/24 of 64.
        quarter = head_dim // 2 // 4
        mrope_section = [
            quarter,
            (head_dim // 2 - quarter) // 2,
            head_dim // 2 - quarter - (head_dim // 2 - quarter) // 2,
        ]
        extra_text, extra_vision = spec.extra.get("text_config", {}), spec.extra.get("vision_config", {})
        config = Qwen2_5_VLConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": spec.hidden_size,
                "intermediate_size": spec.intermediate_size,
                "num_hidden_layers": spec.num_layers,
                "num_attention_heads": spec.num_heads,
                "num_key_value_heads": spec.num_kv_heads,
                "max_position_embeddings": 4096,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": spec.rope_theta,
                    "mrope_section": mrope_section,
                },
                "bos_token_id": None,
                "eos_token_id": tid("<|im_end|>"),
                "pad_token_id": tid("<|endoftext|>"),
                "tie_word_embeddings": False,
                **extra_text,
            },
            vision_config={
                "depth": spec.vision_layers,
                "hidden_size": spec.vision_hidden_size,
                "intermediate_size": 2 * spec.vision_hidden_size,
                "num_heads": max(1, spec.vision_hidden_size // 16),
                "out_hidden_size": spec.hidden_size,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 56,
                "fullatt_block_indexes": [spec.vision_layers - 1],
                **extra_vision,
            },
            image_token_id=tid("<|image_pad|>"),
            video_token_id=tid("<|video_pad|>"),
            vision_start_token_id=tid("<|vision_start|>"),
            vision_end_token_id=tid("<|vision_end|>"),
            eos_token_id=tid("<|im_end|>"),
            pad_token_id=tid("<|endoftext|>"),
            tie_word_embeddings=False,
            architectures=[self.model_class().__name__],
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(config)
        model.generation_config.eos_token_id = tid("<|im_end|>")
        model.generation_config.pad_token_id = tid("<|endoftext|>")
        side = spec.image_size
        low = spec.min_pixels or (side // 2) ** 2
        image_processor = Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=side * side)
        video_processor = Qwen2VLVideoProcessor(min_pixels=low, max_pixels=side * side)
        processor = Qwen2_5_VLProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor
        )
        return model.eval(), processor
