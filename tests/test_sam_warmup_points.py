"""Tiny-SAM warm-up v2: point prompts, the deterministic evaluation prompts, IoU at the evaluation side,
the baselines and the cache key."""

from __future__ import annotations

import math

import pytest
import torch
from _sam_small import SMALL_SAM, rect

from segcompass.sam_warmup import SAM_STAGE, SamWarmupConfig, TinySam
from segcompass.sam_warmup.evaluate import (
    evaluate_models,
    evaluation_table,
    instance_ious,
    interior_points,
    mask_iou,
    prompt_only_masks,
)
from segcompass.sam_warmup.points import (
    NEGATIVE,
    PADDING,
    POSITIVE,
    PointPrompt,
    disk_baseline,
    interior_point,
    sample_point_prompt,
    stack_points,
    to_input_coords,
)
from segcompass.sam_warmup.prompts import coarse_heatmap
from segcompass.sam_warmup.train import SceneTensors, sample_batch, scene_tensors, upsample

SMALL = SMALL_SAM


def test_point_prompts_encode_to_sam_tokens_and_the_point_matters() -> None:
    torch.manual_seed(0)
    sam = TinySam(SamWarmupConfig(**SMALL)).eval()
    emb = torch.randn(2, 256, 4, 4)
    coords = torch.tensor([[[10.0, 12.0], [40.0, 50.0]], [[30.0, 30.0], [0.0, 0.0]]])  # [2, 2, 2] (x, y)
    labels = torch.tensor([[POSITIVE, NEGATIVE], [POSITIVE, PADDING]])
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    assert sparse.shape == (2, 3, 256) and dense.shape == (2, 256, 4, 4)  # SAM pads one −1 point
    with torch.no_grad():
        out = sam.decode_points(emb, torch.tensor([1, 0]), coords, labels)
        assert out.shape == (2, 16, 16)
        one = torch.tensor([[[20.0, 20.0]]])
        inside = sam.decode_points(emb, torch.tensor([0]), one, torch.tensor([[POSITIVE]]))
        outside = sam.decode_points(emb, torch.tensor([0]), one + 30.0, torch.tensor([[POSITIVE]]))
        negative = sam.decode_points(emb, torch.tensor([0]), one, torch.tensor([[NEGATIVE]]))
        other_image = sam.decode_points(emb, torch.tensor([1]), one, torch.tensor([[POSITIVE]]))
    assert (inside - outside).abs().max() > 1e-4  # where the point is changes the mask
    assert (inside - negative).abs().max() > 1e-4  # and so does its label
    assert (inside - other_image).abs().max() > 1e-4  # each prompt reads its own image
    # the dense path still equals the head's: a prompt decoded alone or beside others gives the same mask
    prompts = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        both = sam.decode(emb, prompts)
        alone = sam.decode(emb[1:], prompts[1:, 2:])
    assert both.shape == (2, 3, 16, 16) and torch.allclose(both[1, 2], alone[0, 0], atol=1e-5)


def test_cross_attention_starts_with_keys_tied_to_queries() -> None:
    torch.manual_seed(0)
    tied_sam = TinySam(SamWarmupConfig(**SMALL))
    tied = tied_sam.mask_decoder.transformer
    torch.manual_seed(0)
    free = TinySam(SamWarmupConfig(**SMALL, tie_qk_init=False)).mask_decoder.transformer
    crosses = [tied.layers[0].cross_attn_token_to_image, tied.layers[0].cross_attn_image_to_token,
               tied.final_attn_token_to_image]  # fmt: skip
    for attn in crosses:
        assert torch.equal(attn.k_proj.weight, attn.q_proj.weight) and torch.equal(
            attn.k_proj.bias, attn.q_proj.bias
        )
    # self-attention and the untied init keep segment-anything's independent projections
    assert not torch.equal(tied.layers[0].self_attn.k_proj.weight, tied.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(
        free.final_attn_token_to_image.k_proj.weight, free.final_attn_token_to_image.q_proj.weight
    )
    # a point's positional encoding now scores image positions by proximity: nearest cell wins at init
    pe = tied_sam.prompt_encoder
    point = pe.pe_layer.forward_with_coords(torch.tensor([[[40.0, 8.0]]]), (64, 64))[0]  # [1, 256] (x, y)
    grid = pe.get_dense_pe()[0].flatten(1).T  # [16 cells, 256]
    attn = crosses[0]
    scores = attn.q_proj(point) @ attn.k_proj(grid).T  # [1, 16]
    assert int(scores.argmax()) == 0 * 4 + 2  # (row 0, col 2) holds pixel (x 40, y 8) of the 64² input


def test_points_map_to_sam_input_pixels() -> None:
    yx = torch.tensor([[0, 0], [127, 3]])
    # pixel centre (x + ½)·I/F − ½: SAM's _embed_points adds ½ back
    assert to_input_coords(yx, 128, 256).tolist() == [[0.5, 0.5], [6.5, 254.5]]
    assert to_input_coords(yx, 128, 128).tolist() == [[0.0, 0.0], [3.0, 127.0]]
    coords, labels = stack_points(
        [PointPrompt(torch.tensor([[1, 2]]), torch.tensor([1])),
         PointPrompt(torch.tensor([[3, 4], [5, 6]]), torch.tensor([1, 0]))], 8, 8,
    )  # fmt: skip
    assert coords.shape == (2, 2, 2) and labels.tolist() == [[1, -1], [1, 0]]
    assert coords[1].tolist() == [[4.0, 3.0], [6.0, 5.0]]


def test_interior_point_on_hand_built_masks() -> None:
    # a 7 × 7 square: its centre pixel is the one farthest from the outside (distance 4)
    assert interior_point(rect(20, 2, 9, 5, 12)) == (5, 8)
    # a 7 × 11 rectangle: row 5, cols 8 … 12 all lie 4 from the outside; the first in raster order wins
    assert interior_point(rect(20, 2, 9, 5, 16)) == (5, 8)
    # an even 4 × 4 square: four pixels tie at distance 2, the first in raster order wins
    assert interior_point(rect(10, 2, 6, 2, 6)) == (3, 3)
    # an L: a 6 × 6 block with a 2-wide arm; the point is in the block, not the arm
    m = rect(20, 0, 6, 0, 6) | rect(20, 0, 2, 6, 18)
    assert interior_point(m) == (2, 2)
    # the array edge counts as outside: a mask touching the border is not deepest at the border
    assert interior_point(rect(8, 0, 8, 0, 3)) == (1, 1)  # distance min(2, y + 1, 8 − y): 2 first at y = 1
    with pytest.raises(ValueError, match="non-empty"):
        interior_point(torch.zeros(4, 4, dtype=torch.bool))


def test_coarse_heatmap_on_a_grid_aligned_square() -> None:
    h = coarse_heatmap(rect(16, 4, 8, 4, 8))  # covers cell (1, 1) of the 4 × 4 grid exactly
    # bilinear (align_corners=False): pixel 5 and 6 sit ⅛ of a cell from the cell centre → 0.875 per axis
    assert float(h[5, 5]) == pytest.approx(6.0 * (2 * 0.875**2 - 1))
    assert float(h[0, 0]) == pytest.approx(-6.0) and float(h[15, 15]) == pytest.approx(-6.0)
    assert h.shape == (16, 16) and torch.equal(h, coarse_heatmap(rect(16, 4, 8, 4, 8)))  # no noise
    # pixel 4: source 0.625 → 0.625 per axis; pixel 3: 0.375 — so row 5 is positive from col 4 to 7 only
    assert (h[5] > 0).nonzero().flatten().tolist() == [4, 5, 6, 7]


def test_iou_at_the_evaluation_side_on_a_hand_computed_case() -> None:
    low = torch.full((1, 64, 64), -1.0)
    low[0, 8:16, 8:16] = 1.0
    pred = upsample(low, 128) > 0  # the 8 × 8 square becomes exactly rows/cols 16…31 at 128²
    assert pred.shape == (1, 128, 128) and int(pred.sum()) == 256
    assert torch.equal(pred[0], rect(128, 16, 32, 16, 32))
    gt = rect(128, 16, 32, 16, 40)[None]  # 16 × 24
    assert float(mask_iou(pred, gt)) == pytest.approx(256 / 384)
    assert (
        float(mask_iou(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.bool))) == 0.0
    )


def test_point_baseline_is_the_equal_area_disk_around_the_interior_point() -> None:
    side, r = 64, 10.0
    grid = torch.arange(side, dtype=torch.float32)
    circle = ((grid.view(-1, 1) - 30) ** 2 + (grid.view(1, -1) - 25) ** 2) <= r**2
    assert interior_point(circle) == (30, 25)
    # its own equal-area disk: radius √(area/π) ≈ 10 (the pixel count is not π·r² exactly) → IoU near 1
    assert float(mask_iou(disk_baseline(circle)[None], circle[None])) > 0.95
    square = rect(side, 10, 30, 10, 30)  # 20 × 20; interior point (19, 19), disk radius √(400/π)
    rad = math.sqrt(400 / math.pi)
    expected = sum(1 for y in range(side) for x in range(side) if (y - 19) ** 2 + (x - 19) ** 2 <= rad**2)
    inside = sum(1 for y in range(10, 30) for x in range(10, 30) if (y - 19) ** 2 + (x - 19) ** 2 <= rad**2)
    want = inside / (400 + expected - inside)
    assert float(mask_iou(disk_baseline(square)[None], square[None])) == pytest.approx(want)


def test_the_evaluation_baselines_on_hand_built_scenes() -> None:
    cfg = SamWarmupConfig(**SMALL)  # 64² input, 4² grid, 16² masks, evaluation at 32²
    fine = torch.stack([rect(32, 8, 24, 8, 24), rect(32, 0, 6, 20, 32)])  # [2, 32, 32]
    masks = torch.nn.functional.avg_pool2d(fine.float()[:, None], 2)[:, 0] > 0.5  # [2, 16, 16]
    data = SceneTensors(torch.zeros(1, 3, 64, 64), [masks], [fine], [torch.zeros(2, 2, dtype=torch.long)])
    alone = instance_ious(data, None)
    assert set(alone) == {"point", "heatmap", "blob"} and all(v.shape == (2,) for v in alone.values())
    assert torch.allclose(alone["point"], mask_iou(torch.stack([disk_baseline(m) for m in fine]), fine))
    heat = upsample(torch.stack([coarse_heatmap(m) for m in masks]), 32) > 0
    assert torch.allclose(alone["heatmap"], mask_iou(heat, fine))
    assert torch.equal(prompt_only_masks("heatmap", masks, fine), heat)
    # the 16 × 16 square covers 2 × 2 grid cells exactly: its heatmap misses only the rounded corners
    assert 0.85 < float(alone["heatmap"][0]) < 1.0
    coords, labels = interior_points(fine, 64)
    assert coords[0, 0].tolist() == [30.5, 30.5]  # fine pixel (15, 15) of 32² → (15 + ½)·2 − ½ at 64²
    assert labels.tolist() == [[1], [1]]
    torch.manual_seed(0)
    trained, control = TinySam(cfg).eval(), TinySam(cfg).eval()
    ev = evaluate_models(trained, control, data)
    assert ev["instances"] == 2
    assert ev["point"]["prompt_only"] == pytest.approx(float(alone["point"].mean()))
    assert all(0.0 <= ev[k][m] <= 1.0 for k in ("point", "heatmap", "blob") for m in ev[k])
    table = evaluation_table(ev)
    assert list(table.index) == ["point", "heatmap", "blob"]
    assert list(table.columns) == ["trained", "random_init", "prompt_alone"]
    assert table.loc["heatmap", "prompt_alone"] == pytest.approx(ev["heatmap"]["prompt_only"])
    # a warm-up v1 record (flat centre-blob keys) still shows as one row
    v1 = evaluation_table({"instances": 3, "trained": 0.6, "control": 0.1, "prompt_only": 0.5})
    assert list(v1.index) == ["blob"] and v1.loc["blob", "trained"] == 0.6


def test_training_points_fall_inside_and_negatives_outside_the_instance() -> None:
    g = torch.Generator().manual_seed(0)
    target = rect(32, 10, 20, 10, 20)
    others = rect(32, 0, 5, 0, 32)
    seen_negatives = 0
    for _ in range(50):
        p = sample_point_prompt(target, others, g, negative_prob=0.7, max_negatives=2)
        assert p.labels[0] == POSITIVE and bool(target[p.yx[0, 0], p.yx[0, 1]])
        assert 1 <= len(p.labels) <= 3 and (p.labels[1:] == NEGATIVE).all()
        for y, x in p.yx[1:].tolist():
            seen_negatives += 1
            assert not bool(target[y, x])
            # on the other instance, or on the background within one equal-area radius (6) of the box
            assert bool(others[y, x]) or (4 <= y <= 25 and 4 <= x <= 25)
    assert seen_negatives > 10
    only = sample_point_prompt(target, others, g, negative_prob=0.0)
    assert only.labels.tolist() == [POSITIVE]


def test_a_point_batch_targets_the_instance_its_positive_point_is_on() -> None:
    cfg = SamWarmupConfig(**{**SMALL, "point_fraction": 1.0})
    data = scene_tensors(cfg, "train", cfg.train_scenes)
    batch = sample_batch(data, cfg, torch.Generator().manual_seed(1))
    n = cfg.batch_images * cfg.prompts_per_image
    assert len(batch.point_image) == n and len(batch.dense_image) == 0
    assert batch.coords.shape[:2] == batch.labels.shape and batch.targets.shape == (n, 32, 32)
    for i in range(n):  # positive point (input pixels, 64²) → fine pixel (32²) on the target
        x, y = ((batch.coords[i, 0] + 0.5) / 2 - 0.5).round().long().tolist()
        assert bool(batch.targets[i, y, x]) and batch.labels[i, 0] == POSITIVE
        for (nx, ny), lab in zip(
            ((batch.coords[i] + 0.5) / 2 - 0.5).round().long().tolist(), batch.labels[i], strict=True
        ):
            if lab == NEGATIVE:
                assert not bool(batch.targets[i, ny, nx])


def test_the_cache_key_follows_every_new_field_and_the_version(monkeypatch) -> None:
    base = SamWarmupConfig()
    keys = {base.key(), SAM_STAGE.key(base)}
    for change in ({"point_fraction": 0.7}, {"negative_prob": 0.2}, {"max_negatives": 3},
                   {"eval_size": 256, "loss_size": 64}, {"loss_size": 64}, {"tie_qk_init": False},
                   {"coarse_noise": 1.5}, {"refine_iters": 0}):  # fmt: skip
        other = SamWarmupConfig(**change)
        assert other.key() != base.key() and SAM_STAGE.key(other) != SAM_STAGE.key(base), change
        keys.add(other.key())
    assert len(keys) == 10 and SAM_STAGE.version == 3
    from segcompass.sam_warmup import config as config_module

    v3 = base.key()
    monkeypatch.setattr(config_module, "SAM_WARMUP_VERSION", 2)  # a v2 config of the same fields
    assert '"sam_warmup_version": 2' in SamWarmupConfig().to_json() and SamWarmupConfig().key() != v3
    with pytest.raises(ValueError, match="point_fraction"):
        SamWarmupConfig(point_fraction=1.5)
    with pytest.raises(ValueError, match="loss_size"):
        SamWarmupConfig(loss_size=96)
    with pytest.raises(ValueError, match="eval_size"):
        SamWarmupConfig(eval_size=100)
