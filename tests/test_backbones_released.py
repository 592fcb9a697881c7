"""Backbones loaded the way a released checkpoint is: a tokenizer config that does not say "left", no
reasoning tokens, and an embedding matrix with spare rows (Qwen2.5-VL-7B: 152064 rows for 151665 tokens).

The fixture saves a tiny model in that layout offline: the tokenizer is rebuilt without `<think>`,
`</think>`, `<REF_POS>`, its `tokenizer_config.json` loses `padding_side`, and both embedding matrices are
grown past the tokenizer with spare rows holding a value no trained row has (50.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from segcompass.backbones import REASONING_TOKENS, TokenType, build_tiny, build_tiny_tokenizer, load_backbone
from segcompass.policy import PolicyConfig
from segcompass.policy.rollout import generate_rollouts

FAMILIES = ["qwen2_5_vl", "llava"]
SPARE = 50.0

# The families' own special tokens and roles, as their released tokenizers have them (no reasoning tokens).
RELEASED_TOKENIZERS = {
    "qwen2_5_vl": {
        "special_tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                           "<|image_pad|>", "<|video_pad|>"],
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    },
    "llava": {
        "special_tokens": ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "add_bos": True,
    },
}  # fmt: skip


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    ImageDraw.Draw(img).ellipse((width // 4, height // 4, width // 2, height // 2), fill=(220, 30, 30))
    return img


@pytest.fixture(scope="module", params=FAMILIES)
def released(request, tmp_path_factory) -> tuple[str, Path, dict[str, torch.Tensor]]:
    """(family, folder, expected mean rows {"input": [D], "output": [D]}) of a checkpoint saved like a
    released one."""
    family = request.param
    folder = tmp_path_factory.mktemp(f"released-{family}")
    backbone = build_tiny(family, seed=1)
    plain = build_tiny_tokenizer(**RELEASED_TOKENIZERS[family], include_reasoning_tokens=False)
    assert not set(REASONING_TOKENS) & set(plain.get_vocab())
    n_tokens = len(plain)
    rows = (max(n_tokens, len(backbone.tokenizer)) // 64 + 2) * 64  # spare rows beyond the tokenizer
    backbone.model.resize_token_embeddings(rows, mean_resizing=False)
    expected = {}
    with torch.no_grad():
        for key, module in (
            ("input", backbone.model.get_input_embeddings()),
            ("output", backbone.model.get_output_embeddings()),
        ):
            module.weight[n_tokens:] = SPARE
            ids = sorted(plain.get_vocab().values())
            assert ids == list(range(n_tokens))
            expected[key] = module.weight[:n_tokens].double().mean(0).float()
    backbone.save(folder)
    plain.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("padding_side", None)  # as in the public Qwen2.5-VL / LLaVA-1.5 configs
    config_path.write_text(json.dumps(config, indent=2))
    return family, folder, expected


def test_the_fixture_looks_like_a_released_checkpoint(released) -> None:
    _, folder, _ = released
    assert "padding_side" not in json.loads((folder / "tokenizer_config.json").read_text())
    loaded = load_backbone(folder, add_reasoning_tokens=False)
    assert loaded.model.get_input_embeddings().weight.shape[0] > len(loaded.tokenizer)


def test_batches_are_left_padded_whatever_the_tokenizer_config_says(released) -> None:
    _, folder, _ = released
    backbone = load_backbone(folder)
    assert backbone.tokenizer.padding_side == "left"
    batch = backbone.prepare([picture(112, 112, 0), picture(90, 70, 1)], ["the red circle on the left", "it"])
    mask = batch.inputs["attention_mask"].bool()
    assert (~mask[1]).any() and mask[:, -1].all() and not mask[1, 0]  # pads in front of the short prompt
    assert torch.equal(batch.token_types == TokenType.PAD, ~mask)


def test_added_reasoning_tokens_start_at_the_mean_row_in_both_embeddings(released) -> None:
    _, folder, expected = released
    backbone = load_backbone(folder)
    ids = list(backbone.reasoning_token_ids.values())
    n_tokens = len(backbone.tokenizer) - len(REASONING_TOKENS)
    assert sorted(ids) == list(range(n_tokens, n_tokens + 3))  # on former spare rows: no resize happened
    for key, module in (
        ("input", backbone.model.get_input_embeddings()),
        ("output", backbone.model.get_output_embeddings()),
    ):
        weight = module.weight.detach()
        for i in ids:
            torch.testing.assert_close(weight[i], expected[key], atol=1e-6, rtol=0)
        assert (weight[n_tokens + 3 :] == SPARE).all()  # untouched spare rows stay spare (never used)
    # the new tokens are usable: a response with them is labelled and the forward stays finite
    batch = backbone.prepare([picture(80, 80, 2)], ["x"], responses=["<think>a</think><REF_POS>"])
    assert int((batch.token_types == TokenType.CONCENTRATION).sum()) == 1
    with torch.no_grad():
        logits = backbone.model(**batch.inputs).logits
    real = logits[..., : n_tokens + len(REASONING_TOKENS)]  # spare rows of the LM head still score 50-ish
    assert torch.isfinite(real).all() and real.abs().max() < SPARE / 5


def test_tokens_added_beyond_the_matrix_grow_it_and_start_at_the_mean(tmp_path) -> None:
    backbone = build_tiny("llava", seed=2)
    plain = build_tiny_tokenizer(**RELEASED_TOKENIZERS["llava"], include_reasoning_tokens=False)
    backbone.model.resize_token_embeddings(len(plain), mean_resizing=False)  # no spare row at all
    with torch.no_grad():
        mean_in = backbone.model.get_input_embeddings().weight.double().mean(0).float()
        mean_out = backbone.model.get_output_embeddings().weight.double().mean(0).float()
    backbone.save(tmp_path)
    plain.save_pretrained(tmp_path)
    loaded = load_backbone(tmp_path)
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(plain) + 3
    for i in loaded.reasoning_token_ids.values():
        torch.testing.assert_close(loaded.model.get_input_embeddings().weight[i].detach(), mean_in)
        torch.testing.assert_close(loaded.model.get_output_embeddings().weight[i].detach(), mean_out)


@pytest.fixture(scope="module", params=FAMILIES)
def saved_without_padding_side(request, tmp_path_factory) -> Path:
    """A saved tiny backbone (reasoning tokens included) whose tokenizer config does not say "left"."""
    folder = tmp_path_factory.mktemp(f"no-side-{request.param}")
    build_tiny(request.param, seed=1).save(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("padding_side", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def test_batched_greedy_generation_equals_one_by_one(saved_without_padding_side) -> None:
    """Prompts of different lengths (and image sizes) decode the same in a batch as alone: the same
    tokens through the rollout path, and the same scores at every step within float tolerance."""
    backbone = load_backbone(saved_without_padding_side)
    images = [picture(112, 84, 3), picture(70, 100, 4), picture(112, 112, 5)]
    texts = ["it", "segment the small red circle in the upper left corner of the picture", "the red one"]
    config = PolicyConfig(max_new_tokens=6)
    batched = generate_rollouts(backbone, images, texts, config, greedy=True)
    lengths = batched.prompt_inputs["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3  # three different prompt lengths share one padded batch
    pad = backbone.tokenizer.pad_token_id
    prepared = backbone.prepare(images, texts)
    with torch.no_grad():
        steps = backbone.model.generate(**prepared.inputs, max_new_tokens=6, do_sample=False, pad_token_id=pad,
                                        output_scores=True, return_dict_in_generate=True).scores  # fmt: skip
    for i, (image, text) in enumerate(zip(images, texts, strict=True)):
        alone = generate_rollouts(backbone, [image], [text], config, greedy=True)
        got = batched.response_ids[i][batched.response_mask[i]].tolist()
        want = alone.response_ids[0][alone.response_mask[0]].tolist()
        assert got == want, (i, text, got, want)
        assert batched.texts[i] == alone.texts[0]
        single = backbone.prepare([image], [text])
        with torch.no_grad():
            ref = backbone.model.generate(**single.inputs, max_new_tokens=6, do_sample=False, pad_token_id=pad,
                                          output_scores=True, return_dict_in_generate=True).scores  # fmt: skip
        for t, (a, b) in enumerate(zip(steps, ref, strict=True)):
            torch.testing.assert_close(a[i], b[0], atol=1e-4, rtol=1e-4, msg=f"prompt {i}, step {t}")
