"""Tiny-SAM warm-up: prompts, patch labels, the SAM-format checkpoint the head loads, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _head_common import make_sae
from _sam_small import SMALL_SAM

from segcompass.head import build_head
from segcompass.model import cpu_head_config
from segcompass.sam_warmup import SamWarmupConfig, TinySam, resolve_sam, tiny_sam
from segcompass.sam_warmup.prompts import blob_prompt, centre_blob_prompt, coarse_prompt
from segcompass.sam_warmup.train import SceneTensors, sample_batch, scene_tensors, train

SMALL = {**SMALL_SAM, "steps": 4, "prompts_per_image": 2}


def _square(s: int = 16, lo: int = 4, hi: int = 10) -> torch.Tensor:
    m = torch.zeros(s, s, dtype=torch.bool)
    m[lo:hi, lo:hi] = True
    return m


def test_prompts_are_positive_on_the_instance_and_negative_far_from_it() -> None:
    m = _square()
    g = torch.Generator().manual_seed(0)
    for prompt in (blob_prompt(m, g), coarse_prompt(m, g, noise=0.0), centre_blob_prompt(m)):
        assert prompt.shape == (16, 16)
        assert float(prompt[m].max()) > 0 and float(prompt[0, 15]) < 0
    c = centre_blob_prompt(m)
    assert float(c[7, 7]) == pytest.approx(6.0) or float(c[6, 6]) == pytest.approx(6.0)  # peak at the centre
    with pytest.raises(ValueError, match="non-empty"):
        blob_prompt(torch.zeros(8, 8, dtype=torch.bool), g)


def test_patch_labels_take_the_covering_instance_or_background() -> None:
    m = torch.zeros(2, 16, 16, dtype=torch.bool)
    m[0, :8, :8] = True  # patches (0,0), (0,1), (1,0), (1,1) of the 4 × 4 grid
    m[1, 8:, 8:10] = True  # covers half of patches (2,2), (3,2): exactly 0.5 is not > 0.5
    data = SceneTensors(torch.zeros(1, 3, 64, 64), [m], [m], [torch.tensor([[2, 5], [1, 3]])])
    colours, shapes = data.patch_labels(torch.tensor([0]))
    assert colours.shape == (1, 4, 4)
    assert colours[0, :2, :2].eq(2).all() and shapes[0, :2, :2].eq(5).all()
    assert colours[0, 2:, 2:].eq(7).all() and shapes[0, 2:, 2:].eq(7).all()  # background class


def test_checkpoint_loads_into_the_head_through_the_sam_path(tmp_path: Path) -> None:
    cfg = SamWarmupConfig(**SMALL)
    art = tiny_sam(cfg, tmp_path, progress=False)
    assert not art.cached and art.checkpoint.is_file()
    assert set(art.evaluation) == {"instances", "scenes", "eval_size", "point", "heatmap", "blob"}
    assert all(set(art.evaluation[k]) == {"trained", "control", "prompt_only"} for k in ("point", "heatmap"))
    assert len(art.train_info["losses"]) == cfg.steps
    again = tiny_sam(cfg, tmp_path, progress=False)
    assert again.cached and again.path == art.path and (art.path / "stage.json").is_file()
    assert art.path.parent == tmp_path / "sam"
    sam = TinySam(cfg)
    from safetensors.torch import load_file

    sam.load_state_dict(load_file(str(art.checkpoint)))
    head = build_head(cpu_head_config(32, 64, 2, cfg), make_sae(32, 64), image_encoder=True,
                      sam_checkpoint=art.checkpoint)  # fmt: skip
    for name, p in sam.image_encoder.state_dict().items():
        assert torch.equal(head.image_encoder.state_dict()[name], p), name
    for name, p in sam.mask_decoder.state_dict().items():
        assert torch.equal(head.mask_head.mask_decoder.state_dict()[name], p), name
    x = torch.randn(1, 3, 64, 64)
    prompts = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        emb = head.image_encoder(x)
        assert torch.allclose(head.mask_head(emb, prompts), sam(x, prompts), atol=1e-5)


def test_same_seed_same_weights_and_the_key_follows_the_config(tmp_path: Path) -> None:
    cfg = SamWarmupConfig(**SMALL)
    data = scene_tensors(cfg, "train", cfg.train_scenes)
    torch.set_num_threads(1)
    a = train(cfg, progress=False, data=data).model.state_dict()
    b = train(cfg, progress=False, data=data).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert SamWarmupConfig(**{**SMALL, "seed": 1}).key() != cfg.key()
    assert SamWarmupConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["sam_warmup_version"] >= 1


def test_a_batch_pairs_each_prompt_with_its_instance() -> None:
    cfg = SamWarmupConfig(**{**SMALL, "blob_fraction": 1.0, "point_fraction": 0.0, "loss_size": 16})
    data = scene_tensors(cfg, "train", cfg.train_scenes)
    batch = sample_batch(data, cfg, torch.Generator().manual_seed(0))
    assert batch.pixels.shape == (2, 3, 64, 64) and batch.dense.shape == (4, 16, 16)
    assert batch.targets.shape == (4, 16, 16) and len(batch.point_image) == 0  # the loss at the mask size
    peak = batch.dense.flatten(1).argmax(-1)  # the blob's centre is a pixel of its instance
    assert all(bool(batch.targets[i].flatten()[peak[i]]) for i in range(4))
    assert batch.dense_image.tolist() == [0, 0, 1, 1]
    assert all(len(data.masks[int(s)]) for s in batch.scenes)


def test_bad_settings_and_specs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="blob_fraction"):
        SamWarmupConfig(blob_fraction=2.0)
    with pytest.raises(ValueError, match="encoder fields"):
        SamWarmupConfig(encoder={"bogus": 1})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        SamWarmupConfig(encoder={"img_size": 100})
    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found"):
        resolve_sam(str(tmp_path / "missing.safetensors"))
    assert resolve_sam("") == (None, None)


def test_warm_sam_is_looked_up_never_trained(tmp_path: Path, monkeypatch) -> None:
    from segcompass.sam_warmup import cache as sam_cache
    from segcompass.stages import StageMissing

    monkeypatch.setenv("SEGCOMPASS_CACHE", str(tmp_path))

    def no_training(*args, **kwargs):
        raise AssertionError("resolve_sam must not train")

    monkeypatch.setattr(sam_cache, "train", no_training)
    with pytest.raises(StageMissing, match=r"build it with `segcompass warmup-sam --seed 2`"):
        resolve_sam("warm", seed=2)
    # a folder of the previous layout (`<root>/sam/tiny_sam-<sha>/`) still loads
    config = SamWarmupConfig(seed=2)
    old = tmp_path / "sam" / config.key()
    old.mkdir(parents=True)
    for name in ("sam.safetensors", "sam_warmup_eval.json"):
        (old / name).write_text("{}")
    (old / "sam_warmup_config.json").write_text(config.to_json())
    assert resolve_sam("warm", seed=2) == (old / "sam.safetensors", config)
