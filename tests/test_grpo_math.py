"""GRPO math against hand-computed numbers: advantages, clipping, k3 KL, aggregation, joint loss."""

from __future__ import annotations

import math

import pytest
import torch

from segcompass.grpo import (
    GRPOLossConfig,
    clipped_surrogate,
    group_advantages,
    joint_loss,
    k3_kl,
    masked_mean,
    policy_loss,
)


def test_group_advantages_sample_and_population_std() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3])
    # group 1: mean .5, deviations ±.5, 0, 0; sample var = .5/3, population var = .5/4
    s = math.sqrt(0.5 / 3)
    p = math.sqrt(0.5 / 4)
    out = group_advantages(rewards, group_size=4)
    assert out.advantages.tolist() == pytest.approx(
        [0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 0, 0, 0, 0, 0, 0], abs=1e-6
    )
    assert out.mean.tolist() == pytest.approx([0.5, 0.3]) and out.std.tolist() == pytest.approx(
        [s, 0.0], abs=1e-7
    )
    pop = group_advantages(rewards.reshape(2, 4), std="population")
    assert pop.advantages.shape == (2, 4)
    assert pop.advantages[0].tolist() == pytest.approx([0.5 / (p + 1e-6), -0.5 / (p + 1e-6), 0, 0], abs=1e-6)
    centred = group_advantages(rewards, group_size=4, std="none").advantages
    assert centred.tolist() == pytest.approx([0.5, -0.5, 0, 0, 0, 0, 0, 0], abs=1e-7)
    # matches torch's default std (what TRL and veRL call)
    g = rewards[:4]
    assert out.advantages[:4].tolist() == pytest.approx(((g - g.mean()) / (g.std() + 1e-6)).tolist())


def test_group_advantages_bad_input() -> None:
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(8), group_size=3)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="unknown std"):
        group_advantages(torch.zeros(2, 2), std="bogus")  # type: ignore[arg-type]


def _rollout() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # two responses x 4 tokens; old log-probs 0, so ratio = exp(logp); ratios .5, 1, 1.5 and a masked token
    ratios = torch.tensor([[0.5, 1.0, 1.5, 100.0], [0.5, 1.0, 1.5, 100.0]])
    logp = ratios.log().requires_grad_(True)
    old = torch.zeros(2, 4)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    return logp, old, adv, mask


def test_clipping_on_both_sides_for_both_signs_and_masked_tokens() -> None:
    logp, old, adv, mask = _rollout()
    s = clipped_surrogate(logp, old, adv, clip_eps=0.2)
    # A = +1: max(-r, -clip r): r .5 -> -.5 (not clipped), 1 -> -1, 1.5 -> -1.2 (clipped)
    # A = -1: max(r, clip r):   r .5 -> .8 (clipped),  1 -> 1,  1.5 -> 1.5 (not clipped)
    assert torch.allclose(s.per_token[:, :3], torch.tensor([[-0.5, -1.0, -1.2], [0.8, 1.0, 1.5]]), atol=1e-6)
    assert s.clipped_high[:, :3].tolist() == [[False, False, True], [False, False, False]]
    assert s.clipped_low[:, :3].tolist() == [[False, False, False], [True, False, False]]
    out = policy_loss(logp, old, None, adv, mask)
    # token mean over the 6 valid tokens: (-.5 - 1 - 1.2 + .8 + 1 + 1.5) / 6 = .1; the masked r=100 is out
    assert out.pg.item() == pytest.approx(0.1, abs=1e-6) and out.kl.item() == 0.0
    assert out.clip_frac_high.item() == pytest.approx(1 / 6) and out.clip_frac_low.item() == pytest.approx(
        1 / 6
    )
    assert out.ratio_mean.item() == pytest.approx(3.0 / 3, abs=1e-6)
    out.pg.backward()
    # d(-A r)/dlogp = -A r on unclipped tokens, 0 on clipped and masked ones; divided by 6
    expected = torch.tensor([[-0.5, -1.0, 0.0, 0.0], [0.0, 1.0, 1.5, 0.0]]) / 6
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_asymmetric_clip_high() -> None:
    logp, old, adv, _ = _rollout()
    s = clipped_surrogate(logp, old, adv, clip_eps=0.2, clip_eps_high=0.6)
    assert s.per_token[0, 2].item() == pytest.approx(-1.5) and not s.clipped_high[0, 2]
    assert s.per_token[1, 0].item() == pytest.approx(0.8)


def test_k3_kl_values_gradient_and_clamp() -> None:
    logp = torch.tensor([math.log(0.5), math.log(0.3), 0.0], requires_grad=True)
    ref = torch.tensor([math.log(0.25), math.log(0.3), 5.0])
    kl = k3_kl(logp, ref)
    # d = ref - logp = log .5: e^d - d - 1 = .5 + log 2 - 1; equal -> 0; d = 5: e^5 - 6 = 142.4 -> clamped 10
    assert kl.tolist() == pytest.approx([0.5 + math.log(2) - 1, 0.0, 10.0], abs=1e-6)
    assert k3_kl(logp, ref, clamp=None)[2].item() == pytest.approx(math.exp(5) - 6, rel=1e-6)
    kl[:2].sum().backward()
    # d kl / d logp = 1 - e^d: 1 - .5 = .5 and 0 at equality
    assert logp.grad.tolist() == pytest.approx([0.5, 0.0, 0.0], abs=1e-6)
    assert (k3_kl(torch.randn(100), torch.randn(100), clamp=None) >= 0).all()


def test_kl_is_token_mean_over_valid_tokens() -> None:
    logp = torch.tensor([[math.log(0.5), 0.0], [0.0, 0.0]])
    ref = torch.tensor([[math.log(0.25), 3.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    out = policy_loss(logp, logp.detach(), ref, torch.zeros(2), mask)
    assert out.kl.item() == pytest.approx((0.5 + math.log(2) - 1) / 3, abs=1e-6)
    assert out.pg.item() == 0.0


def test_aggregation_modes() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(10 / 4)
    assert masked_mean(values, mask, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        masked_mean(values, mask, "sum")  # type: ignore[arg-type]


def test_joint_loss_weights_and_gradients_reach_each_part() -> None:
    pg = torch.tensor(0.1, requires_grad=True)
    kl = torch.tensor(0.2, requires_grad=True)
    seg = torch.tensor(1.0, requires_grad=True)
    conf = torch.tensor(0.5, requires_grad=True)
    out = joint_loss(pg, kl, seg, conf)
    assert out.total.item() == pytest.approx(0.1 + 0.2 * 0.2 + 0.3 * 1.0 + 0.2 * 0.5)
    out.total.backward()
    assert [t.grad.item() for t in (pg, kl, seg, conf)] == pytest.approx([1.0, 0.2, 0.3, 0.2])
    assert out.log_dict()["loss/total"] == pytest.approx(0.54)
    cfg = GRPOLossConfig(beta=0.0, seg_weight=1.0, conf_weight=0.0)
    assert joint_loss(pg, kl, seg, 3.0, cfg).total.item() == pytest.approx(1.1)


def test_policy_loss_gradcheck_double() -> None:
    torch.manual_seed(0)
    logp = (torch.randn(3, 5, dtype=torch.float64) * 0.1).requires_grad_(True)
    old = torch.randn(3, 5, dtype=torch.float64) * 0.1
    ref = torch.randn(3, 5, dtype=torch.float64) * 0.1
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.3

    def f(x: torch.Tensor) -> torch.Tensor:
        out = policy_loss(x, old, ref, adv, mask, GRPOLossConfig(clip_eps=0.5))
        return out.pg + 0.2 * out.kl

    assert torch.autograd.gradcheck(f, (logp,))
