"""LLaVA-1.5: CLIP ViT-L/14-336 (shortest-edge resize + centre crop), MLP projector, Llama/Vicuna LM."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.image_transforms import get_resize_output_image_size

from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType

from .family import BackboneFamily, KnownCheckpoint, PromptText, TinySpec
from .tokenizer import build_tiny_tokenizer

_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")


class LlavaFamily(BackboneFamily):
    """LLaVA-1.5 in its Hugging Face form (`llava-hf/llava-1.5-*-hf`, `LlavaForConditionalGeneration`)."""

    name = "llava"
    model_types = ("llava",)
    image_placeholder = "<image>"
    image_token = "<image>"
    known_checkpoints = (
        KnownCheckpoint("llava-hf/llava-1.5-7b-hf", hook_layer=16, hidden_size=4096, num_layers=32),
        KnownCheckpoint("llava-hf/llava-1.5-13b-hf", hook_layer=16, hidden_size=5120, num_layers=40),
    )

    def model_class(self) -> type[PreTrainedModel]:
        return LlavaForConditionalGeneration

    def decoder_layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return model.model.language_model.layers

    def text_config(self, model: PreTrainedModel) -> Any:
        return model.config.text_config

    def chat_prompt(
        self, instruction: str, *, image_first: bool = True, system: str | None = None
    ) -> PromptText:
        # LLaVA-1.5 (vicuna_v1) format: "USER: <image>\n{instruction} ASSISTANT:".
        parts: list[tuple[str, TokenType]] = []
        if system:
            parts.append((f"{system} ", TokenType.SPECIAL))
        parts.append(("USER: ", TokenType.SPECIAL))
        image = [("<image>", TokenType.IMAGE), ("\n", TokenType.SPECIAL)]
        text = [(instruction, TokenType.INSTRUCTION)]
        parts += image + text if image_first else [*text, ("\n", TokenType.SPECIAL), image[0]]
        parts.append((" ASSISTANT:", TokenType.SPECIAL))
        return PromptText.from_parts(parts)

    def image_geometries(
        self, processor: ProcessorMixin, images: list[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> list[ImageGeometry]:
        ip = processor.image_processor
        patch = processor.patch_size
        crop_h, crop_w = ip.crop_size["height"], ip.crop_size["width"]
        out = []
        for image in images:
            # The same size rule the image processor applies (shortest edge → S, aspect kept).
            chw = np.zeros((1, image.height, image.width), dtype=np.uint8)
            rh, rw = get_resize_output_image_size(chw, size=ip.size["shortest_edge"], default_to_square=False)
            out.append(
                ImageGeometry(
                    original_size=(image.height, image.width),
                    resized_size=(rh, rw),
                    crop_top_left=((rh - crop_h) // 2, (rw - crop_w) // 2),
                    grid=(crop_h // patch, crop_w // patch),
                    cell_size=patch,
                )
            )
        return out

    def build_tiny(self, spec: TinySpec, seed: int) -> tuple[PreTrainedModel, ProcessorMixin]:
        tokenizer = build_tiny_tokenizer(
            _SPECIALS, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", add_bos=True
        )
        tid = tokenizer.convert_tokens_to_ids
        side, patch = spec.image_size, 14
        config = LlavaConfig(
            vision_config={
                "model_type": "clip_vision_model",
                "hidden_size": spec.vision_hidden_size,
                "intermediate_size": 2 * spec.vision_hidden_size,
                "num_hidden_layers": spec.vision_layers,
                "num_attention_heads": max(1, spec.vision_hidden_size // 16),
                "image_size": side,
                "patch_size": patch,
                "projection_dim": spec.vision_hidden_size,
            },
            text_config={
                "model_type": "llama",
                "vocab_size": len(tokenizer),
                "hidden_size": spec.hidden_size,
                "intermediate_size": spec.intermediate_size,
                "num_hidden_layers": spec.num_layers,
                "num_attention_heads": spec.num_heads,
                "num_key_value_heads": spec.num_kv_heads,
                "max_position_embeddings": 4096,
                "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
                "bos_token_id": tid("<s>"),
                "eos_token_id": tid("</s>"),
                "pad_token_id": tid("<pad>"),
                "tie_word_embeddings": False,
            },
            image_token_index=tid("<image>"),
            image_seq_length=(side // patch) ** 2,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            pad_token_id=tid("<pad>"),
            tie_word_embeddings=False,
            architectures=[self.model_class().__name__],
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlavaForConditionalGeneration(config)
        model.generation_config.bos_token_id = tid("<s>")
        model.generation_config.eos_token_id = tid("</s>")
        model.generation_config.pad_token_id = tid("<pad>")
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
        return model.eval(), processor
