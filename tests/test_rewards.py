"""Format and segmentation rewards against hand-computed cases (docs/design.md §4)."""

from __future__ import annotations

import pytest
import torch

from segcompass.rewards import (
    FormatRewardConfig,
    RewardConfig,
    SegRewardConfig,
    compute_reward,
    format_reward,
    multi_object_seg_reward,
    single_target_seg_reward,
)

T = "<REF_POS>"
K4 = 4  # expected concentration tokens: the policy's head_slots (K in multi mode)
SINGLE = 1  # single mode (the reference): one token


def test_well_formed_k_tokens_scores_one_and_reports_parts() -> None:
    r = format_reward("<think>look at the red one</think>" + T * 4, expected_tokens=K4)
    assert r.reward == 1.0 and r.failure is None
    assert (r.think_chars, r.think_words, r.num_tokens, r.expected_tokens) == (19, 5, 4, 4)
    assert r.as_dict()["think_chars"] == 19


@pytest.mark.parametrize(
    ("text", "cfg", "failure"),
    [
        ("<think>x</think>" + T * 3, K4, "token_count"),
        ("<think>x</think>" + T * 5, K4, "token_count"),
        ("<think>x</think>" + T * 4, SINGLE, "token_count"),
        ("<think>  \n </think>" + T, SINGLE, "empty_think"),
        ("<think>a</think><think>b</think>" + T, SINGLE, "think_blocks"),
        ("<think>a" + T, SINGLE, "think_blocks"),
        ("</think>a<think>" + T, SINGLE, "think_blocks"),
        (T + "<think>a</think>", SINGLE, "token_before_think"),
        ("<think>a" + T + "</think>", SINGLE, "token_before_think"),
        ("<think>a</think>" + T + T + T + "<think>", K4, "think_blocks"),
        ("no tags at all", K4, "think_blocks"),
    ],
)
def test_hard_rules_give_zero(text: str, cfg: int, failure: str) -> None:
    r = format_reward(text, expected_tokens=cfg)
    assert r.reward == 0.0 and r.failure == failure


def test_single_mode_is_the_reference_rule() -> None:
    assert format_reward("<think>ok</think>" + T, expected_tokens=SINGLE).reward == 1.0
    with pytest.raises(TypeError):
        format_reward("<think>ok</think>" + T)  # the expected count is the policy's: no default of its own


def test_soft_rules_give_point_nine() -> None:
    assert format_reward("Sure. <think>x</think>" + T, expected_tokens=SINGLE).reward == 0.9
    assert (
        format_reward("  \n<think>x</think>" + T, expected_tokens=SINGLE).reward == 1.0
    )  # whitespace is not text
    assert format_reward("<think>" + "a" * 2048 + "</think>" + T, expected_tokens=SINGLE).reward == 1.0
    long = format_reward("<think>" + "a" * 2049 + "</think>" + T, expected_tokens=SINGLE)
    assert long.reward == 0.9 and long.long_think and long.think_chars == 2049
    ten = " ".join(["w"] * 10)
    eleven = " ".join(["w"] * 11)
    assert format_reward(f"<think>x</think> {ten} {T}", expected_tokens=SINGLE).reward == 1.0
    r = format_reward(f"<think>x</think> {eleven} {T}", expected_tokens=SINGLE)
    assert r.reward == 0.9 and r.words_between == 11
    # K = 2: the words between the tokens count too (3 + 8 = 11 > 10)
    r2 = format_reward(f"<think>x</think> a b c {T} d e f g h i j k {T}", expected_tokens=2)
    assert r2.reward == 0.9 and r2.words_between == 11
    # words after the last token are recorded, not penalised
    r3 = format_reward(
        f"<think>x</think>{T} and then many more words follow here okay yes no no", expected_tokens=SINGLE
    )
    assert r3.reward == 1.0 and r3.words_after == 11


def test_format_reward_values_are_configurable() -> None:
    cfg = FormatRewardConfig(max_think_chars=3, reduced=0.5, full=2.0)
    assert format_reward("<think>abcd</think>" + T, cfg, expected_tokens=1).reward == 0.5
    assert format_reward("<think>abc</think>" + T, cfg, expected_tokens=1).reward == 2.0
    with pytest.raises(ValueError, match="expected_tokens"):
        format_reward("<think>abc</think>" + T, cfg, expected_tokens=0)


def _m(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


P0 = _m([[1, 1], [0, 0]])
P1 = _m([[0, 1], [1, 1]])
P2 = _m([[0, 0], [0.5, 0.5]])
P3 = _m([[1, 1], [1, 1]])
G0 = _m([[1, 0], [0, 0]])
G1 = _m([[0, 0], [1, 1]])
G2 = _m([[0, 1], [0, 0]])


def test_multi_object_reward_hungarian_with_padding() -> None:
    # kept: slots 0 (0.9) and 2 (0.5 is >= 0.5); slots 1 (0.2) and 3 (0.49) dropped.
    # soft IoU: p0-g0 = 1/(2+1-1) = .5, p0-g2 = .5, p2-g1 = 1/(1+2-1) = .5, others 0.
    # 2 preds, 3 GT -> M = 3: matched .5, .5 and a padded 0 -> 1/3.
    probs = torch.stack([P0, P1, P2, P3])
    conf = torch.tensor([0.9, 0.2, 0.5, 0.49])
    r = multi_object_seg_reward(probs, conf, torch.stack([G0, G1, G2]))
    assert (r.num_pred, r.num_gt) == (2, 3)
    assert r.reward == pytest.approx(1 / 3, abs=1e-5)
    assert sorted(r.matched_iou) == pytest.approx([0.0, 0.5, 0.5], abs=1e-5)


def test_multi_object_reward_empty_cases_and_surplus() -> None:
    probs = torch.stack([P0, P1])
    low, high = torch.tensor([0.1, 0.4]), torch.tensor([0.6, 0.1])
    assert multi_object_seg_reward(probs, low, None).reward == 1.0  # both empty
    assert multi_object_seg_reward(probs, low, torch.zeros(0, 2, 2)).reward == 1.0
    assert multi_object_seg_reward(probs, low, G0[None]).reward == 0.0  # prediction empty
    assert multi_object_seg_reward(probs, high, None).reward == 0.0  # GT empty
    # two perfect predictions of one GT instance: matched [1, 0] -> 0.5
    two = multi_object_seg_reward(torch.stack([G0, G0]), torch.tensor([0.9, 0.9]), G0[None])
    assert two.reward == pytest.approx(0.5, abs=1e-5)
    # the threshold is configurable
    cfg = SegRewardConfig(confidence_threshold=0.05)
    assert multi_object_seg_reward(probs, low, None, cfg).reward == 0.0


def test_single_target_reward_best_slot() -> None:
    # union of the GT = [[1,1],[0,0]]
    # slot 0 [[.5,.5],[0,0]]: soft IoU 1/(1+2-1) = .5, Dice 2/3, hard IoU 1 -> .25 + .2*2/3 + .3 = .683333
    # slot 1 [[1,0],[1,0]]:   soft IoU 1/3, Dice .5, hard IoU 1/3 -> 1/6 + .1 + .1 = .366667
    probs = torch.stack([_m([[0.5, 0.5], [0, 0]]), _m([[1, 0], [1, 0]])])
    r = single_target_seg_reward(probs, torch.stack([G0, G2]))
    assert r.best_slot == 0 and r.reward == pytest.approx(0.25 + 0.4 / 3 + 0.3, abs=1e-5)
    assert r.matched_iou == pytest.approx([0.5], abs=1e-5)
    # restricted to confident slots: only slot 1 remains
    cfg = SegRewardConfig(single_use_confidence=True)
    r1 = single_target_seg_reward(probs, torch.stack([G0, G2]), torch.tensor([0.1, 0.9]), cfg)
    assert r1.best_slot == 1 and r1.reward == pytest.approx(1 / 6 + 0.2, abs=1e-5)
    r0 = single_target_seg_reward(probs, torch.stack([G0, G2]), torch.tensor([0.1, 0.1]), cfg)
    assert r0.reward == 0.0 and r0.best_slot is None


def test_combined_reward_weights() -> None:
    probs = torch.stack([P0, P1, P2, P3])
    conf = torch.tensor([0.9, 0.2, 0.5, 0.49])
    gt = torch.stack([G0, G1, G2])
    text = "<think>find them</think>" + T * 4
    r = compute_reward(text, probs, conf, gt, expected_tokens=4)
    assert r.total == pytest.approx(0.3 * 1.0 + 0.7 / 3, abs=1e-5)
    logged = r.log_dict()
    assert logged["reward/format"] == 1.0 and logged["reward/format_think_chars"] == 9.0
    cfg = RewardConfig(format_weight=1.0, seg_weight=0.0)
    assert compute_reward(text, probs, conf, gt, cfg, expected_tokens=1).total == 0.0
    with pytest.raises(ValueError, match="GT masks"):
        compute_reward(text, probs, conf, torch.zeros(1, 3, 3), expected_tokens=4)
