"""`stack:<family>` loads the default staged tiny VLM as a release (the pinned key of the default
`StackConfig`'s last stage, copied from the committed checkpoints into an empty cache, never trained) and
`stack-init:<family>` the same architecture and image processor at random init: the control."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcompass.backbones import backbone_identity, emits_slots, resolve_backbone
from segcompass.backbones.stacked import STACK_RELEASES, stack_folder, stack_settings
from segcompass.committed import committed_stage
from segcompass.model.build import build_model
from segcompass.policy import PolicyConfig
from segcompass.pretrain.config import StackConfig
from segcompass.pretrain.stack import INSTRUCT
from segcompass.stages import StageMissing

KEY = STACK_RELEASES["qwen2_5_vl"]
REPO_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def _committed() -> None:
    if committed_stage(KEY) is None:
        pytest.skip(f"{KEY} is not committed in this checkout")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty stage cache, with the repository's committed checkpoints as the committed root."""
    monkeypatch.setenv("SEGCOMPASS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEGCOMPASS_CHECKPOINTS", str(REPO_CHECKPOINTS))
    return tmp_path / "cache"


def test_the_pinned_release_is_the_default_stacks_last_stage():
    assert INSTRUCT.key(StackConfig().instruct_stage()) == KEY


def test_stack_loads_the_committed_release_into_an_empty_cache_and_sees_at_the_stack_size(empty_cache):
    _committed()
    bb = resolve_backbone("stack:qwen2_5_vl")
    assert stack_folder("stack:qwen2_5_vl") == empty_cache / "stages" / KEY  # copied, not built
    assert backbone_identity("stack:qwen2_5_vl") == KEY
    assert stack_settings(empty_cache / "stages" / KEY)["num_slots"] == StackConfig().num_slots
    batch = bb.prepare([Image.fromarray(np.zeros((256, 320, 3), np.uint8))], ["find the red circle"])
    _, h, w = batch.inputs["image_grid_thw"][0].tolist()
    assert (h // 2) * (w // 2) >= 64  # ≥ 8 × 8 merged image tokens (the stack's processor, not the preset's)


def test_the_control_is_the_same_architecture_at_random_init(empty_cache):
    _committed()
    trained = resolve_backbone("stack:qwen2_5_vl")
    control = resolve_backbone("stack-init:qwen2_5_vl", seed=3)
    again = resolve_backbone("stack-init:qwen2_5_vl", seed=3)
    ours, theirs = trained.model.state_dict(), control.model.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    weight = "model.language_model.layers.0.mlp.up_proj.weight"
    weight = weight if weight in ours else next(k for k in ours if k.endswith("layers.0.mlp.up_proj.weight"))
    assert not torch.equal(ours[weight], theirs[weight])
    assert torch.equal(theirs[weight], again.model.state_dict()[weight])  # deterministic for a seed
    assert control.hook_layer == trained.hook_layer
    image = Image.fromarray(np.zeros((300, 220, 3), np.uint8))
    grids = [bb.prepare([image], ["x"]).inputs["image_grid_thw"].tolist() for bb in (trained, control)]
    assert grids[0] == grids[1]
    assert backbone_identity("stack-init:qwen2_5_vl", seed=3) == f"stack-init:{KEY}@seed3"


def test_the_policys_k_must_be_the_one_the_stack_was_taught(empty_cache, tmp_path):
    _committed()
    assert emits_slots("stack:qwen2_5_vl") and not emits_slots("stack-init:qwen2_5_vl")
    with pytest.raises(ValueError, match=r"taught to emit K = 4 .* asks for K = 3"):
        build_model("stack:qwen2_5_vl", tmp_path / "no-sae", 0, PolicyConfig(num_slots=3), sam="")


def test_without_a_commit_or_a_build_the_stack_is_missing_and_names_its_command(empty_cache, monkeypatch):
    monkeypatch.setenv("SEGCOMPASS_CHECKPOINTS", "")
    with pytest.raises(StageMissing, match="segcompass pretrain"):
        resolve_backbone("stack:qwen2_5_vl")
    assert not (empty_cache / "stages" / KEY).exists()


def test_a_family_without_a_stack_is_a_clear_error():
    with pytest.raises(ValueError, match="no default stack for 'llava'"):
        resolve_backbone("stack:llava")
