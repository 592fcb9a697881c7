"""SAE evaluation: metrics on SAEs with known answers, per token type, JSON, the eval command, CE splice."""

from __future__ import annotations

import json

import pytest
import torch
from _sae_common import make_store, sparse_dictionary
from sae_lens import StandardSAE, StandardSAEConfig

from sae.evaluation import MetricsAccumulator, evaluate_sae
from sae.token_types import TokenType


def identity_sae(d: int) -> StandardSAE:
    """ReLU SAE with 2d atoms ±e_i: reconstructs every input exactly, one active atom per non-zero coordinate."""
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


class Batch:
    def __init__(self, activations, token_type):
        self.activations, self.token_type = activations, token_type


def test_identity_sae_is_perfect():
    x = torch.randn(300, 8)
    result = evaluate_sae(identity_sae(8), [x[:100], x[100:]])
    row = result.row("all")
    assert row["tokens"] == 300 and row["mse"] < 1e-10 and abs(row["explained_variance"] - 1) < 1e-9
    assert row["l0"] == 8.0 and row["dead_fraction"] == 0.0 and row["dense_fraction"] == 1.0


def test_mean_only_reconstruction_explains_nothing_and_dead_atoms_are_counted():
    x = torch.randn(1000, 8) + 0.5
    sae = identity_sae(8)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(x.mean(0))
        sae.b_enc[:4] = -1e6  # atoms 0..3 (the +e_0..+e_3 directions) can never fire
    row = evaluate_sae(sae, [x]).row("all")
    assert abs(row["explained_variance"]) < 1e-9 and abs(row["fvu"] - 1) < 1e-9
    assert row["dead_fraction"] == pytest.approx(4 / 16)
    total_var = (x - x.mean(0)).pow(2).sum(-1).mean().item()
    assert row["mse"] == pytest.approx(total_var, rel=1e-6)


def test_per_token_type_groups_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    tt = torch.tensor([TokenType.IMAGE, TokenType.COT], dtype=torch.int8).repeat(200)
    x[tt == TokenType.COT] *= 4.0
    sae = identity_sae(6)
    with torch.no_grad():
        sae.W_dec.mul_(0.5)  # reconstruct half of every input
    result = evaluate_sae(sae, [Batch(x[:150], tt[:150]), Batch(x[150:], tt[150:])], chunk_rows=64)
    table = result.table.set_index("group")
    assert list(table.index) == ["all", "image", "cot"]
    for name, t in (("image", TokenType.IMAGE), ("cot", TokenType.COT)):
        xs = x[tt == t]
        err = (0.5 * xs).pow(2).sum(-1)
        assert table.loc[name, "tokens"] == 200
        assert table.loc[name, "mse"] == pytest.approx(err.mean().item(), rel=1e-6)
        ev = 1 - err.sum() / (xs - xs.mean(0)).pow(2).sum()
        assert table.loc[name, "explained_variance"] == pytest.approx(ev.item(), rel=1e-6)
    assert table.loc["all", "mse"] == pytest.approx((0.5 * x).pow(2).sum(-1).mean().item(), rel=1e-6)
    back = json.loads(json.dumps(result.to_dict()))
    assert back["metrics"][0]["group"] == "all" and len(back["metrics"]) == 3


def test_max_tokens_and_width_check():
    sae = identity_sae(4)
    acc = evaluate_sae(sae, [torch.randn(100, 4)] * 5, max_tokens=250)
    assert acc.row("all")["tokens"] == 250
    with pytest.raises(ValueError, match="d_in=4 but the activations have width 5"):
        evaluate_sae(sae, [torch.randn(10, 5)])
    assert MetricsAccumulator(4, 8).result().row("all")["tokens"] == 0


def test_eval_command_writes_tables_and_refuses_mismatches(tmp_path):
    from sae.cli import main
    from sae.evaluation.config import EvalConfig
    from sae.evaluation.run import run_eval

    x, _ = sparse_dictionary(4096, seed=2)
    store = make_store(tmp_path / "acts", x)
    sae_dir = tmp_path / "sae"
    identity_sae(32).save_model(sae_dir)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--sae",
                str(sae_dir),
                "--store",
                str(store.root),
                "--out",
                str(out),
                "--split",
                "all",
            ]
        )
        == 0
    )
    report = json.loads((out / "eval.json").read_text())
    assert report["metrics"][0]["tokens"] == 4096 and report["metrics"][0]["explained_variance"] > 0.999
    assert (out / "eval.csv").read_text().startswith("group,tokens,mse")
    before = (out / "eval.json").read_bytes()
    assert main(["eval", "--sae", str(sae_dir), "--store", str(store.root), "--out", str(out)]) == 2
    assert (out / "eval.json").read_bytes() == before
    narrow = make_store(tmp_path / "narrow", torch.randn(512, 16))
    with pytest.raises(ValueError, match="d_in=32 but the store holds activations of width 16"):
        run_eval(EvalConfig(sae=str(sae_dir), store=str(narrow.root)))
    (sae_dir / "segcompass_sae.json").write_text(json.dumps({"backbone": "other", "hook_layer": 1}))
    with pytest.raises(ValueError, match="backbone 'other' but the store holds backbone 'synthetic'"):
        run_eval(EvalConfig(sae=str(sae_dir), store=str(store.root)))


@pytest.mark.slow
def test_ce_loss_recovered_through_nnsight_on_a_tiny_backbone():
    from PIL import Image

    from sae.evaluation import ce_loss_recovered
    from segcompass.backbones import build_tiny

    backbone = build_tiny("qwen2_5_vl")
    d = backbone.hidden_size
    images = [Image.new("RGB", (112, 112), c) for c in [(200, 20, 20), (20, 200, 20), (20, 20, 200)]]
    texts = ["find the red square", "where is the green thing", "the blue one please"]
    perfect = ce_loss_recovered(backbone, identity_sae(d), images, texts, batch_size=2)
    assert perfect.tokens > 0 and perfect.zero_ablation != perfect.clean
    assert perfect.spliced == pytest.approx(perfect.clean, abs=1e-4)
    assert perfect.recovered == pytest.approx(1.0, abs=1e-3)
    dead = identity_sae(d)
    with torch.no_grad():
        dead.W_dec.zero_()
    nothing = ce_loss_recovered(backbone, dead, images, texts, batch_size=2)
    assert nothing.spliced == pytest.approx(nothing.zero_ablation, abs=1e-4)
    assert nothing.recovered == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="hidden size"):
        ce_loss_recovered(backbone, identity_sae(d + 1), images, texts)
