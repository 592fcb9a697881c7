"""Tiny-SAM warm-up: SAM's iterative training (clicks on the previous error, the previous logits as the
mask prompt) and the coarse prompts' noise."""

from __future__ import annotations

import pytest
import torch
from _sam_small import SMALL_SAM, rect

from segcompass.sam_warmup import SamWarmupConfig, TinySam
from segcompass.sam_warmup.points import NEGATIVE, PADDING, POSITIVE, error_clicks
from segcompass.sam_warmup.prompts import coarse_heatmap
from segcompass.sam_warmup.train import (
    Batch,
    batch_logits,
    sample_batch,
    scene_tensors,
    train,
    with_error_clicks,
)

SMALL = SMALL_SAM


def test_error_clicks_land_on_the_one_wrong_pixel_with_its_label() -> None:
    target = torch.stack([rect(8, 2, 5, 2, 5)] * 3)  # [3, 8, 8]
    pred = target.clone()
    pred[0, 3, 4] = False  # missed: the only error → positive click there
    pred[1, 6, 1] = True  # leaked: the only error → negative click there
    g = torch.Generator().manual_seed(0)
    yx, labels = error_clicks(pred, target, g)
    assert yx.tolist() == [[3, 4], [6, 1], [0, 0]]
    assert labels.tolist() == [POSITIVE, NEGATIVE, PADDING]  # the third is right everywhere: padding


def test_error_clicks_are_uniform_over_the_error_region() -> None:
    target = rect(4, 0, 2, 0, 4)[None]  # top half
    pred = torch.zeros_like(target)  # misses all 8 target pixels
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        yx, labels = error_clicks(pred, target, g)
        assert labels.item() == POSITIVE and bool(target[0, yx[0, 0], yx[0, 1]])
        seen.add(tuple(yx[0].tolist()))
    assert len(seen) == 8


def test_a_refinement_pass_adds_a_click_and_feeds_the_previous_logits_back() -> None:
    cfg = SamWarmupConfig(**SMALL)
    torch.manual_seed(0)
    model = TinySam(cfg).eval()
    # one dense prompt, then one point prompt on image 0 (input 64², targets at 32²)
    target = rect(32, 8, 16, 8, 16).float()
    batch = Batch(
        pixels=torch.randn(1, 3, 64, 64), scenes=torch.tensor([0]),
        dense_image=torch.tensor([0]), dense=torch.randn(1, 16, 16),
        point_image=torch.tensor([0]), coords=torch.tensor([[[23.0, 23.0]]]), labels=torch.tensor([[POSITIVE]]),
        targets=torch.stack([target, target]),
    )  # fmt: skip
    previous = torch.full((2, 16, 16), -5.0)  # predicts nothing: every error is a missed target pixel
    refined = with_error_clicks(batch, previous, 64, torch.Generator().manual_seed(0))
    assert refined.coords.shape == (1, 2, 2) and refined.labels.tolist() == [[POSITIVE, POSITIVE]]
    x, y = ((refined.coords[0, 1] + 0.5) / 2 - 0.5).round().long().tolist()  # input pixel → 32² pixel
    assert bool(target[y, x])
    assert torch.equal(refined.dense, batch.dense) and refined.coords[0, 0].tolist() == [23.0, 23.0]
    with torch.no_grad():
        emb = model.image_encoder(batch.pixels)
        out = batch_logits(model, emb, refined, previous=previous)
        # the dense prompt's place is taken by the previous logits
        assert torch.allclose(out[0], model.decode(emb, previous[None, :1])[0, 0], atol=1e-6)
        other = batch_logits(model, emb, refined, previous=previous + 10.0)
        assert not torch.allclose(out[1], other[1])  # the point prompt reads the previous logits too
        assert torch.allclose(out[1], model.decode_points(emb, torch.tensor([0]), refined.coords,
                                                          refined.labels, previous[1:, None])[0], atol=1e-6)  # fmt: skip


def test_coarse_noise_zero_gives_the_evaluation_heatmap() -> None:
    cfg = SamWarmupConfig(**{**SMALL, "point_fraction": 0.0, "blob_fraction": 0.0, "coarse_noise": 0.0})
    data = scene_tensors(cfg, "train", cfg.train_scenes)
    batch = sample_batch(data, cfg, torch.Generator().manual_seed(0))
    for prompt, image in zip(batch.dense, batch.dense_image, strict=True):  # its instance's heatmap, exactly
        instances = data.masks[int(batch.scenes[image])]
        assert any(torch.equal(prompt, coarse_heatmap(m)) for m in instances)
    noisy_cfg = SamWarmupConfig(**{**SMALL, "point_fraction": 0.0, "blob_fraction": 0.0, "coarse_noise": 1.5})
    noisy = sample_batch(data, noisy_cfg, torch.Generator().manual_seed(0))
    assert 1.2 < float((noisy.dense - batch.dense).std()) < 1.8  # the same prompts plus noise of std 1.5


def test_refinement_trains_and_its_fields_are_checked_and_keyed() -> None:
    cfg = SamWarmupConfig(**{**SMALL, "refine_iters": 2, "point_fraction": 0.5})
    result = train(cfg, progress=False, data=scene_tensors(cfg, "train", cfg.train_scenes))
    assert len(result.losses) == 2 and all(0 < x < 100 for x in result.losses)
    base = SamWarmupConfig()
    assert SamWarmupConfig(refine_iters=2).key() != base.key() != SamWarmupConfig(coarse_noise=0.5).key()
    with pytest.raises(ValueError, match="refine_iters"):
        SamWarmupConfig(refine_iters=-1)
    with pytest.raises(ValueError, match="coarse_noise"):
        SamWarmupConfig(coarse_noise=-0.1)
