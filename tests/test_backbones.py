"""Tiny backbones: forward pass, token layout, image geometry, save/load, hook-layer convention, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from segcompass.backbones import (
    REASONING_TOKENS,
    TinySpec,
    TokenType,
    build_tiny,
    build_tiny_tokenizer,
    get_family,
    list_families,
    load_backbone,
    resolve_backbone,
)

FAMILIES = ["qwen2_5_vl", "llava"]


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request):
    return build_tiny(request.param, seed=0)


def scene_image(width: int = 200, height: int = 140) -> Image.Image:
    """A real RGB picture: a gradient background with two coloured shapes."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    arr = np.stack([np.add.outer(y, x) / 2, np.tile(x, (height, 1)), np.tile(y[:, None], (1, width))], -1)
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((20, 20, 80, 80), fill=(220, 30, 30))
    draw.rectangle((120, 60, 180, 120), fill=(30, 30, 220))
    return img


def test_registry_lists_both_families_and_rejects_unknown_names():
    assert set(FAMILIES) <= set(list_families())
    assert get_family("Qwen2.5-VL").name == "qwen2_5_vl"
    with pytest.raises(ValueError, match=r"unknown backbone family 'gpt5'.*llava.*qwen2_5_vl"):
        get_family("gpt5")


def test_known_checkpoints_use_the_papers_hook_layers():
    qwen, llava = get_family("qwen2_5_vl"), get_family("llava")
    assert qwen.default_hook_layer("Qwen/Qwen2.5-VL-7B-Instruct", 28) == 13
    assert llava.default_hook_layer("llava-hf/llava-1.5-7b-hf", 32) == 16
    assert llava.default_hook_layer("/models/llava-hf/llava-1.5-13b-hf", 40) == 16
    assert qwen.default_hook_layer("my/other-qwen", 36) == 18  # unknown: middle of the stack


@pytest.mark.parametrize("layer", [0, 4, -1, 17])
def test_hook_layer_out_of_range_names_the_valid_range(layer):
    with pytest.raises(ValueError, match=r"valid hook layers are 1\.\.3"):
        build_tiny("qwen2_5_vl", spec=TinySpec(hook_layer=layer))


def test_forward_pass_on_a_real_image_labels_every_position(backbone):
    instruction = "find the red circle"
    batch = backbone.prepare([scene_image()], [instruction])
    types = batch.token_types[0]
    ids = batch.inputs["input_ids"][0]
    geometry = batch.geometries[0]
    # Image positions: exactly the image-token ids, as many as the geometry's grid, in raster order.
    is_image = types == TokenType.IMAGE
    assert torch.equal(is_image, ids == backbone.image_token_id)
    assert int(is_image.sum()) == geometry.num_tokens
    rows, cols = geometry.grid
    expected_rc = torch.tensor([[r, c] for r in range(rows) for c in range(cols)])
    assert torch.equal(batch.image_rc[0][is_image], expected_rc)
    assert (batch.image_rc[0][~is_image] == -1).all()
    # Instruction positions decode back to the instruction; nothing is padding in a batch of one.
    decoded = backbone.tokenizer.decode(ids[types == TokenType.INSTRUCTION])
    assert decoded.strip() == instruction
    assert not (types == TokenType.PAD).any()
    assert set(types.tolist()) == {TokenType.SPECIAL, TokenType.IMAGE, TokenType.INSTRUCTION}

    with torch.no_grad():
        out = backbone.model(**batch.inputs, output_hidden_states=True)
    assert len(out.hidden_states) == backbone.num_layers + 1
    assert out.hidden_states[backbone.hook_layer].shape == (1, ids.numel(), backbone.hidden_size)
    assert torch.isfinite(out.logits).all()


def test_response_positions_are_cot_and_concentration(backbone):
    response = "<think> the red shape is left </think><REF_POS><REF_POS>"
    batch = backbone.prepare([scene_image()], ["find it"], responses=[response])
    types, ids = batch.token_types[0], batch.inputs["input_ids"][0]
    start = int(batch.response_start[0])
    assert (types[start:] != TokenType.INSTRUCTION).all() and (types[:start] != TokenType.COT).all()
    ref_pos = backbone.reasoning_token_ids["<REF_POS>"]
    assert torch.equal(types == TokenType.CONCENTRATION, ids == ref_pos)
    assert int((types == TokenType.CONCENTRATION).sum()) == 2
    assert backbone.tokenizer.decode(ids[types == TokenType.COT]).strip() == "the red shape is left"


def test_left_padding_in_a_batch_marks_pad_and_keeps_layouts(backbone):
    images = [scene_image(200, 140), scene_image(112, 112)]
    batch = backbone.prepare(images, ["the blue square on the right side", "it"])
    mask = batch.inputs["attention_mask"].bool()
    assert torch.equal(batch.token_types == TokenType.PAD, ~mask)
    assert (~mask[1]).any() and mask[:, -1].all()  # left padding: the short prompt is padded in front
    for b, geometry in enumerate(batch.geometries):
        assert int((batch.token_types[b] == TokenType.IMAGE).sum()) == geometry.num_tokens
    with torch.no_grad():
        padded = backbone.model(**batch.inputs, output_hidden_states=True).hidden_states[backbone.hook_layer]
        alone = backbone.prepare(images[1:], ["it"])
        single = backbone.model(**alone.inputs, output_hidden_states=True).hidden_states[backbone.hook_layer]
    n = single.shape[1]
    torch.testing.assert_close(padded[1, -n:], single[0], atol=1e-4, rtol=1e-4)


def test_instruction_first_order_puts_the_image_after_the_instruction(backbone):
    batch = backbone.prepare([scene_image()], ["find the red circle"], image_first=False)
    types = batch.token_types[0].tolist()
    assert max(i for i, t in enumerate(types) if t == TokenType.INSTRUCTION) < types.index(TokenType.IMAGE)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_geometry_maps_each_token_to_its_pixels(family):
    """Paint exactly one token's cell white: the processor's pixels for that token are the bright ones."""
    backbone = build_tiny(family)
    for size in [(240, 160), (112, 112), (150, 260)]:
        probe = backbone.prepare([Image.new("RGB", size)], ["x"]).geometries[0]
        boxes = probe.token_boxes()
        rows, cols = probe.grid
        target = (rows // 2) * cols + cols // 2
        x0, y0, x1, y1 = boxes[target]
        img = Image.new("RGB", size)
        ImageDraw.Draw(img).rectangle((x0 + 2, y0 + 2, x1 - 3, y1 - 3), fill=(255, 255, 255))
        batch = backbone.prepare([img], ["x"])
        pv = batch.inputs["pixel_values"]
        if family == "qwen2_5_vl":  # [n_patches, C*tp*p*p]; each token is merge² consecutive patches
            per_token = pv.view(rows * cols, -1).mean(1)
        else:  # [1, 3, S, S]
            cell = probe.cell_size
            per_token = pv[0].mean(0).unfold(0, cell, cell).unfold(1, cell, cell).mean((-1, -2)).flatten()
        assert int(per_token.argmax()) == target, (family, size)
        index_map = probe.token_index_map()
        assert index_map.shape == (size[1], size[0])
        cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
        assert index_map[cy, cx] == target


def test_hidden_state_index_convention_matches_the_decoder_blocks(backbone):
    """hidden_states[L] is the output of decoder block L-1 (docs/design.md §4)."""
    captured = {}
    layer = backbone.hook_layer
    handle = backbone.decoder_layers[layer - 1].register_forward_hook(
        lambda _m, _i, out: captured.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        batch = backbone.prepare([scene_image()], ["find the red circle"])
        with torch.no_grad():
            out = backbone.model(**batch.inputs, output_hidden_states=True)
    finally:
        handle.remove()
    assert torch.equal(captured["h"], out.hidden_states[layer])


def test_save_and_load_back_through_the_real_checkpoint_path(backbone, tmp_path):
    backbone.save(tmp_path)
    loaded = load_backbone(tmp_path)  # family from config.json, hook layer from segcompass.json
    assert loaded.family.name == backbone.family.name
    assert loaded.hook_layer == backbone.hook_layer
    assert "Pil" in type(loaded.processor.image_processor).__name__
    assert loaded.reasoning_token_ids == backbone.reasoning_token_ids
    images, texts = [scene_image()], ["find the blue square"]
    with torch.no_grad():
        a = backbone.model(**backbone.prepare(images, texts).inputs).logits
        b = loaded.model(**loaded.prepare(images, texts).inputs).logits
    assert torch.equal(a, b)
    assert load_backbone(tmp_path, hook_layer=1).hook_layer == 1
    with pytest.raises(ValueError, match="valid hook layers"):
        load_backbone(tmp_path, hook_layer=9)


def test_missing_reasoning_tokens_are_added_on_load(tmp_path):
    backbone = build_tiny("llava")
    backbone.save(tmp_path)
    # Replace the tokenizer by one without SegCompass's tokens, as a released checkpoint would have.
    plain = build_tiny_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos=True,
        include_reasoning_tokens=False,
    )
    assert not set(REASONING_TOKENS) & set(plain.get_vocab())
    plain.save_pretrained(tmp_path)
    loaded = load_backbone(tmp_path)
    ids = loaded.reasoning_token_ids
    assert len(set(ids.values())) == 3 and loaded.tokenizer.unk_token_id not in ids.values()
    assert max(ids.values()) < loaded.model.get_input_embeddings().num_embeddings
    batch = loaded.prepare([scene_image()], ["x"], responses=["<think>a</think><REF_POS>"])
    assert int((batch.token_types == TokenType.CONCENTRATION).sum()) == 1
    assert load_backbone(tmp_path, add_reasoning_tokens=False).tokenizer.convert_tokens_to_ids(
        "<REF_POS>"
    ) in (
        None,
        plain.unk_token_id,
    )


def test_tiny_presets_are_deterministic_for_a_seed():
    a, b, c = (
        build_tiny("qwen2_5_vl", seed=3),
        build_tiny("qwen2_5_vl", seed=3),
        build_tiny("qwen2_5_vl", seed=4),
    )
    wa, wb, wc = (m.model.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def test_tokenizer_round_trips_any_text():
    tok = build_tiny_tokenizer(["<|endoftext|>"], eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    text = "Wo ist der rote Kreis? ünïcødé 123 <think>why</think><REF_POS>"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.convert_tokens_to_ids("<REF_POS>") != tok.unk_token_id


def test_resolve_backbone_builds_tiny_presets():
    bb = resolve_backbone("tiny:llava", hook_layer=3)
    assert bb.family.name == "llava" and bb.hook_layer == 3 and bb.name_or_path == "tiny:llava"


def test_bad_inputs_are_refused_with_clear_messages(backbone):
    with pytest.raises(ValueError, match="instruction 0 is empty"):
        backbone.prepare([scene_image()], ["  "])
    with pytest.raises(ValueError, match="batch mismatch"):
        backbone.prepare([scene_image()], ["a", "b"])
    with pytest.raises(TypeError, match="expected a PIL image"):
        backbone.prepare([np.zeros((8, 8, 3))], ["a"])
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_backbone(".")
