"""Hungarian matching and every loss term against hand-computed small cases."""

from __future__ import annotations

import math

import pytest
import torch

from segcompass.head import (
    LossConfig,
    Match,
    TooManyTargetsError,
    bce_per_pair,
    dice_per_pair,
    focal_per_pair,
    head_losses,
    hungarian,
    match_slots,
    prepare_targets,
    soft_iou_matrix,
)

LN2 = math.log(2.0)
G = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # a 2×2 GT: top row on


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_soft_iou_matrix_by_hand() -> None:
    p = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])  # [2, 2, 2]
    g = torch.stack([G, 1 - G])
    iou = soft_iou_matrix(p, g, eps=0.0)
    # slot 0 vs top row: I = 1.5, U = 1.5 + 2 − 1.5 = 2 → 0.75; vs bottom row: I = 0, U = 3.5 → 0
    # slot 1 vs top row: 0; vs bottom row: I = 2, U = 2 → 1
    torch.testing.assert_close(iou, torch.tensor([[0.75, 0.0], [0.0, 1.0]]))


def test_hungarian_by_hand() -> None:
    cost = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4]])
    r, c = hungarian(cost)  # best: (0→1, 1→0) = 0.3
    assert r.tolist() == [0, 1] and c.tolist() == [1, 0]
    r, c = hungarian(cost.t())  # 3 rows, 2 cols: rows 0 and 1 get columns 1 and 0
    assert r.tolist() == [0, 1] and c.tolist() == [1, 0]


def test_match_slots_fewer_targets_than_slots_and_no_target() -> None:
    big = 20.0
    # three slots: slot 0 predicts the bottom row, slot 1 nothing, slot 2 the top row
    logits = torch.stack([(1 - 2 * G) * big, -big * torch.ones(2, 2), (2 * G - 1) * big])
    m = match_slots(logits, torch.stack([G]))  # one target: the top row → slot 2
    assert m.slot_idx.tolist() == [2] and m.target_idx.tolist() == [0]
    assert float(m.iou[0]) == pytest.approx(1.0, abs=1e-5)
    m2 = match_slots(logits, torch.stack([1 - G, G]))
    assert m2.slot_idx.tolist() == [0, 2] and m2.target_idx.tolist() == [0, 1]
    empty = match_slots(logits, torch.zeros(0, 2, 2))
    assert empty.slot_idx.numel() == 0 and empty.target_idx.numel() == 0


def test_match_cost_can_use_confidence() -> None:
    logits = torch.zeros(2, 2, 2)  # both slots identical masks: IoU ties
    conf = torch.tensor([-3.0, 3.0])
    m = match_slots(logits, torch.stack([G]), conf, iou_weight=1.0, conf_weight=1.0)
    assert m.slot_idx.tolist() == [1]
    with pytest.raises(ValueError, match="confidence_logits"):
        match_slots(logits, torch.stack([G]), None, conf_weight=1.0)


def test_pixel_losses_by_hand() -> None:
    zero = torch.zeros(1, 2, 2)
    assert float(bce_per_pair(zero, G[None])) == pytest.approx(LN2)
    # p = 0.5 everywhere: Σpg = 1, Σp = 2, Σg = 2 → 1 − (2 + 1)/(4 + 1) = 0.4
    assert float(dice_per_pair(zero, G[None], smooth=1.0)) == pytest.approx(0.4)
    # focal at p = 0.5: ce = ln2, (1 − p_t)² = 0.25, alpha 0.25 on positives, 0.75 on negatives
    assert float(focal_per_pair(zero, G[None])) == pytest.approx((2 * 0.25 + 2 * 0.75) * 0.25 * LN2 / 4)
    x = (2 * G - 1) * 2.0  # logits ±2 on the right pixels
    p = 1 / (1 + math.exp(-2.0))
    assert float(dice_per_pair(x[None], G[None])) == pytest.approx(
        1 - (2 * 2 * p + 1) / (2 * p + 2 * (1 - p) + 2 + 1)
    )
    ce = softplus(-2.0)
    assert float(focal_per_pair(x[None], G[None])) == pytest.approx(
        (2 * 0.25 + 2 * 0.75) * (1 - p) ** 2 * ce / 4
    )
    assert float(bce_per_pair(x[None], G[None])) == pytest.approx(ce)


@pytest.mark.parametrize(("step", "c_d", "c_f"), [(0, 0.8, 0.0), (9, 0.8, 0.0), (10, 2.0, 5.0)])
def test_head_losses_by_hand(step: int, c_d: float, c_f: float) -> None:
    cfg = LossConfig(switch_step=10)
    heat = torch.zeros(2, 2, 2, 2)  # every heatmap logit 0
    mask = torch.zeros(2, 2, 2, 2)
    mask[0, 1] = (2 * G - 1) * 2.0  # sample 0, slot 1: logits ±2
    conf = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    targets = [torch.stack([G]), torch.zeros(0, 2, 2)]  # sample 0: one target, sample 1: none
    matches = [
        Match(torch.tensor([1]), torch.tensor([0]), torch.tensor([1.0])),
        Match(*[torch.empty(0, dtype=torch.long)] * 2, torch.empty(0)),
    ]
    out = head_losses(heat, mask, conf, targets, matches, cfg, step=step)
    p = 1 / (1 + math.exp(-2.0))
    ce = softplus(-2.0)
    mask_dice = 1 - (4 * p + 1) / (2 + 2 + 1)
    mask_focal = (2 * 0.25 + 2 * 0.75) * (1 - p) ** 2 * ce / 4
    seg = LN2 + c_d * mask_dice + c_f * mask_focal + c_d * 0.4
    # conf targets: [[0, 1], [0, 0]]; BCE(x, 0) = softplus(x), BCE(x, 1) = softplus(−x)
    conf_loss = (softplus(0.5) + softplus(1.0) + softplus(2.0) + softplus(0.0)) / 4
    assert (out.dice_coef, out.focal_coef, out.num_matched) == (c_d, c_f, 1)
    assert float(out.heatmap_bce) == pytest.approx(LN2)
    assert float(out.heatmap_dice) == pytest.approx(0.4)
    assert float(out.mask_dice) == pytest.approx(mask_dice)
    assert float(out.mask_focal) == pytest.approx(mask_focal)
    assert float(out.seg) == pytest.approx(seg)
    assert float(out.conf) == pytest.approx(conf_loss)
    assert float(out.total) == pytest.approx(0.3 * seg + 0.2 * conf_loss)


def test_no_target_batch_has_zero_seg_loss_and_all_zero_conf_targets() -> None:
    heat = torch.randn(2, 3, 2, 2, requires_grad=True)
    mask = torch.randn(2, 3, 2, 2, requires_grad=True)
    conf = torch.tensor([[1.0, -1.0, 0.0], [2.0, 0.5, -0.5]], requires_grad=True)
    none = Match(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), torch.empty(0))
    out = head_losses(heat, mask, conf, [torch.zeros(0, 2, 2)] * 2, [none, none], LossConfig())
    assert float(out.seg.detach()) == 0.0 and out.num_matched == 0
    want = sum(softplus(v) for v in conf.flatten().tolist()) / 6
    assert float(out.conf.detach()) == pytest.approx(want)
    out.total.backward()  # the graph stays valid; no mask gradient
    assert float(mask.grad.abs().sum()) == 0.0
    assert float(conf.grad.abs().sum()) > 0.0


def test_more_targets_than_slots_error_or_drop() -> None:
    t = [torch.zeros(3, 2, 2), torch.zeros(1, 2, 2)]
    with pytest.raises(
        TooManyTargetsError, match="sample 0 has 3 target instances but the head has only 2 slots"
    ):
        prepare_targets(t, 2, "error")
    kept, dropped = prepare_targets(t, 2, "drop")
    assert [k.shape[0] for k in kept] == [2, 1] and dropped == [1, 0]
    assert kept[0].data_ptr() == t[0].data_ptr(), "drop keeps the first K instances"
    with pytest.raises(ValueError, match="unknown too_many_targets"):
        prepare_targets(t, 2, "ignore")  # type: ignore[arg-type]
