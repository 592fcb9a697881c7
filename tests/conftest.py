"""Test-wide settings (never touch the network, never log to wandb) and shared fixtures."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No stage comes from the repository's committed checkpoints unless a test points at a root of its own.
os.environ["SEGCOMPASS_CHECKPOINTS"] = ""


@pytest.fixture(scope="session")
def toy_vlm_spec():
    """The pretraining tests' tiny Qwen2.5-VL: a 2-block, 64-wide language model under a 2-block, 32-wide
    vision tower with full attention, at 112 px."""
    from segcompass.backbones.family import TinySpec

    return TinySpec(
        hidden_size=64,
        num_layers=2,
        intermediate_size=128,
        vision_hidden_size=32,
        vision_layers=2,
        image_size=112,
        min_pixels=112 * 112,
        hook_layer=1,
        extra={"vision_config": {"fullatt_block_indexes": [0, 1]}},
    )


@pytest.fixture(scope="session")
def toy_vlm_pool(toy_vlm_spec):
    """Four train scenes of the default world labelled for the toy VLM's image grid (read-only)."""
    from segcompass.backbones import build_tiny
    from segcompass.pretrain.pool import ProcessorGrid, build_pool
    from segcompass.world import WorldConfig

    backbone = build_tiny("qwen2_5_vl", seed=0, spec=toy_vlm_spec)
    return build_pool(WorldConfig(), "train", 4, ProcessorGrid.of(backbone.processor.image_processor))
