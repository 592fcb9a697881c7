"""Supported multimodal LLM families (Qwen2.5-VL, LLaVA-1.5): loading, structure, prompts, tiny presets.

>>> from segcompass.backbones import build_tiny, load_backbone
>>> bb = build_tiny("qwen2_5_vl")            # random weights, offline
>>> batch = bb.prepare([image], ["find the red circle"])
>>> out = bb.model(**batch.inputs, output_hidden_states=True)
>>> out.hidden_states[bb.hook_layer]           # the states the SAE reads, [B, T, D]
"""

from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType

from .backbone import Backbone, PreparedBatch, validate_hook_layer
from .family import BackboneFamily, KnownCheckpoint, PromptText, TinySpec
from .registry import (
    backbone_identity,
    build_tiny,
    emits_slots,
    family_for_model_type,
    get_family,
    list_families,
    load_backbone,
    resolve_backbone,
)
from .stacked import DEFAULT_BACKBONE, DEFAULT_CONTROL
from .tokenizer import REASONING_TOKENS, build_tiny_tokenizer

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_CONTROL",
    "REASONING_TOKENS",
    "Backbone",
    "BackboneFamily",
    "ImageGeometry",
    "KnownCheckpoint",
    "PreparedBatch",
    "PromptText",
    "TinySpec",
    "TokenType",
    "backbone_identity",
    "build_tiny",
    "build_tiny_tokenizer",
    "emits_slots",
    "family_for_model_type",
    "get_family",
    "list_families",
    "load_backbone",
    "resolve_backbone",
    "validate_hook_layer",
]
