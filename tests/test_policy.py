"""The policy: rollouts, the one forward (log-probs, hook states, concentration states), its read-outs."""

from __future__ import annotations

import pytest
import torch
from _training_common import RESPONSE, K
from PIL import Image

from sae.token_types import TokenType
from segcompass.backbones import build_tiny
from segcompass.policy import (
    PolicyConfig,
    gather_concentration,
    generate_rollouts,
    policy_forward,
    reference_logprobs,
    response_mask_of,
    rollouts_from_responses,
)
from segcompass.training.ablation import AblationConfig


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return build_tiny("qwen2_5_vl", seed=0)


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (64 + 16 * i, 64), (40 * i, 120, 200)) for i in range(n)]


def test_response_mask_stops_after_the_first_eos() -> None:
    ids = torch.tensor([[5, 6, 0, 7, 0], [0, 1, 1, 1, 1], [3, 3, 3, 3, 3]])
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(response_mask_of(ids, {0}), want)


def test_gather_concentration_by_hand() -> None:
    states = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    c = int(TokenType.CONCENTRATION)
    types = torch.tensor([[0, c, 4, c, c], [4, 4, c, 4, 4]])
    multi, found = gather_concentration(states, types, num_slots=2, mode="multi")
    assert found.tolist() == [3, 1]
    assert torch.equal(multi[0], states[0, [1, 3]])  # the first K
    assert torch.equal(multi[1, 0], states[1, 2]) and torch.equal(multi[1, 1], torch.zeros(3))  # zero-padded
    single, _ = gather_concentration(states, types, num_slots=2, mode="single")
    assert single.shape == (2, 1, 3)
    assert torch.equal(single[0, 0], states[0, 4]) and torch.equal(single[1, 0], states[1, 2])  # the last


def test_sampling_is_seeded_and_greedy_is_deterministic(backbone) -> None:
    cfg = PolicyConfig(num_slots=K, max_new_tokens=6)
    imgs, texts = _images(2), ["Segment the red circle.", "Find the blue star."]
    torch.manual_seed(3)
    a = generate_rollouts(backbone, imgs, texts, cfg, group_size=3)
    torch.manual_seed(3)
    b = generate_rollouts(backbone, imgs, texts, cfg, group_size=3)
    assert a.response_ids.shape[0] == 6 and a.num_prompts == 2
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    g1 = generate_rollouts(backbone, imgs, texts, cfg, greedy=True)
    g2 = generate_rollouts(backbone, imgs, texts, cfg, greedy=True)
    assert torch.equal(g1.response_ids, g2.response_ids)
    with pytest.raises(ValueError, match="greedy"):
        generate_rollouts(backbone, imgs, texts, cfg, greedy=True, group_size=2)
    with pytest.raises(ValueError, match="as many images"):
        generate_rollouts(backbone, imgs[:1], texts, cfg)


def test_one_forward_gives_logprobs_hook_states_and_concentration_states(backbone) -> None:
    cfg = PolicyConfig(num_slots=K)
    imgs = _images(2)
    ro = rollouts_from_responses(
        backbone, imgs, ["Segment the red circle.", "Find it."], [RESPONSE, "<think>x</think><REF_POS>"], cfg
    )
    st = policy_forward(backbone, ro, cfg)
    inputs = ro.full_inputs()
    with torch.no_grad():
        ref = backbone.model(**inputs, output_hidden_states=True)
    p, r = ro.prompt_length, ro.response_ids.shape[1]
    logp = torch.log_softmax(ref.logits[:, p - 1 : p + r - 1].float(), -1)
    want = logp.gather(-1, ro.response_ids[..., None]).squeeze(-1) * ro.response_mask
    torch.testing.assert_close(st.logp, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(reference_logprobs(backbone.model, ro), st.logp.detach(), rtol=0, atol=1e-5)
    assert torch.equal(st.hook_states, ref.hidden_states[backbone.hook_layer])
    assert (
        not st.hook_states.requires_grad and st.logp.requires_grad and st.concentration_states.requires_grad
    )
    # Concentration states: the last layer at the <REF_POS> positions; sample 1 has one of K = 2.
    assert st.concentration_found.tolist() == [K, 1]
    pos = torch.nonzero(ro.token_types[0] == TokenType.CONCENTRATION).flatten()
    assert torch.equal(st.concentration_states[0].detach(), ref.hidden_states[-1][0, pos])
    assert torch.equal(st.concentration_states[1, 1].detach(), torch.zeros(backbone.hidden_size))
    # The head reads image, instruction and CoT tokens only; the response adds its CoT tokens.
    types = ro.token_types[st.concept_token_mask]
    assert set(types.tolist()) == {int(TokenType.IMAGE), int(TokenType.INSTRUCTION), int(TokenType.COT)}
    assert int(((ro.token_types == TokenType.COT) & st.concept_token_mask).sum()) > 0
    # The EOS after the tokens is scored (the policy chooses to stop) and nothing after it.
    assert ro.response_mask.sum(1).tolist() == [len(backbone.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
                                               for t in ro.texts]  # fmt: skip


def test_policy_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="num_slots"):
        PolicyConfig(num_slots=0)
    with pytest.raises(ValueError, match="mode"):
        PolicyConfig(mode="several")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="text"):
        PolicyConfig(prompt_template="no placeholder")
    with pytest.raises(ValueError, match="unknown token types"):
        PolicyConfig(concept_token_types=("IMAGE", "PIXELS"))


def test_rollouts_never_contain_image_placeholders(backbone) -> None:
    """A random policy would sample <|image_pad|> now and then, and the forward over prompt + response
    would then see more image tokens than image features: generation suppresses them."""
    from segcompass.policy.rollout import multimodal_token_ids

    banned = multimodal_token_ids(backbone)
    assert backbone.image_token_id in banned
    cfg = PolicyConfig(num_slots=K, max_new_tokens=48, temperature=3.0)
    torch.manual_seed(0)
    ro = generate_rollouts(backbone, _images(2), ["a", "b"], cfg, group_size=8)
    assert not torch.isin(ro.response_ids, torch.tensor(banned)).any()
    policy_forward(backbone, ro, cfg)  # would raise on a mismatch
    with pytest.raises(ValueError, match="placeholder"):
        rollouts_from_responses(backbone, _images(1), ["a"], ["<|image_pad|>"], cfg)


def test_default_response_budget_fits_the_worlds_reference_responses(backbone) -> None:
    """A response cut by max_new_tokens loses its <REF_POS> tokens (zero concentration states): the default
    budget must hold the synthetic world's reference responses, relational reasoning included."""
    from segcompass.warmup.tasks import format_response
    from segcompass.world import WorldConfig, generate_sample

    cfg, ablation = PolicyConfig(), AblationConfig()
    samples = [generate_sample(WorldConfig(), "val", i) for i in range(60)]
    lengths = {
        s.sample_id: len(backbone.tokenizer(format_response(s.reasoning, cfg.num_slots))["input_ids"]) + 1
        for s in samples
    }  # + the end-of-turn token
    relational = [lengths[s.sample_id] for s in samples if s.kind == "relational"]
    assert relational and max(relational) > 80  # the old budget cut these
    for budget in (cfg.max_new_tokens, ablation.train.policy.max_new_tokens):
        fits = sum(n <= budget for n in lengths.values()) / len(lengths)
        assert fits >= 0.95, f"only {fits:.0%} of the reference responses fit in {budget} new tokens"
