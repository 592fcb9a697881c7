"""SAE training through sae-lens: recovery of known atoms, sae-lens loading, presets and the L0 warning."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from _sae_common import make_store, max_cosine, sparse_dictionary

from sae.training import TrainConfig, train_sae

# Standard SAE on a 2x-overcomplete dictionary of 64 unit atoms in 32 dimensions, 3 atoms per token.
RECOVERY = {
    "d_sae": 128,
    "l1_coefficient": 1.0,
    "lr": 3e-3,
    "batch_size": 256,
    "epochs": 5,
    "progress": False,
    "num_threads": 1,
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    x, atoms = sparse_dictionary(32768)
    store = make_store(tmp_path_factory.mktemp("store") / "acts", x)
    return store, x, atoms


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    store, _, _ = synthetic
    out = tmp_path_factory.mktemp("run") / "sae"
    return train_sae(TrainConfig(store=str(store.root), out=str(out), **RECOVERY))


def test_training_recovers_ground_truth_atoms(trained, synthetic):
    """Mean over the 64 true atoms of the best cosine with any learned decoder row. Random decoder rows give
    about 0.46 here (the max of 128 cosines of random directions in 32 dimensions), and two true atoms share
    at most a cosine of ~0.7, so ≥ 0.9 means each atom was found, not approximated by a neighbour."""
    _, _, atoms = synthetic
    learned = max_cosine(trained.sae.W_dec.detach(), atoms)
    random = max_cosine(torch.randn(128, 32, generator=torch.Generator().manual_seed(1)), atoms)
    coherence = (atoms @ atoms.T - torch.eye(len(atoms))).max()
    assert random.mean() < 0.55 and coherence < 0.9
    assert learned.mean() >= 0.9, f"mean max-cosine {learned.mean():.3f} (random {random.mean():.3f})"
    assert learned.min() >= 0.8
    val = trained.validation.set_index("group")
    assert val.loc["all", "explained_variance"] > 0.8
    assert set(val.index) == {"all", "image", "instruction", "cot"}
    assert val.loc["all", "tokens"] == val.loc[["image", "instruction", "cot"], "tokens"].sum()


def test_sae_lens_loads_the_saved_sae_and_agrees(trained, synthetic):
    from sae_lens import SAE

    loaded = SAE.load_from_disk(str(trained.out))
    assert type(loaded).__name__ == "StandardSAE"
    x = synthetic[1][:512]
    with torch.no_grad():
        ours = trained.sae.encode(x)
        theirs = loaded.encode(x)
        assert torch.equal(ours, theirs)
        assert torch.equal(trained.sae.decode(ours), loaded.decode(theirs))
    for name, p in loaded.named_parameters():
        assert torch.equal(p, dict(trained.sae.named_parameters())[name])


def test_metadata_beside_the_sae(trained, synthetic):
    store = synthetic[0]
    meta = json.loads((trained.out / "segcompass_sae.json").read_text())
    assert meta["store_id"] == store.store_id and meta["hook_layer"] == 1 and meta["backbone"] == "synthetic"
    assert meta["d_in"] == 32 and meta["d_sae"] == 128 and meta["train_steps"] == trained.steps
    assert meta["trained_token_type_counts"] == store.manifest.token_type_counts
    assert len(meta["store_manifest_sha256"]) == 64
    assert meta["config"]["l1_coefficient"] == 1.0 and meta["warnings"] == []
    cfg = json.loads((trained.out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "hidden_states.1"
    assert cfg["metadata"]["segcompass"]["store_id"] == store.store_id
    assert not list(trained.out.glob(".final-tmp-*"))


def test_topk_with_sparse_kernels_recovers_atoms(synthetic, tmp_path):
    store, _, atoms = synthetic
    cfg = TrainConfig(
        store=str(store.root),
        out=str(tmp_path / "topk"),
        architecture="topk",
        k=3,
        d_sae=128,
        lr=3e-3,
        batch_size=256,
        epochs=3,
        progress=False,
        val_max_tokens=0,
    )
    result = train_sae(cfg)
    assert type(result.sae).__name__ == "SparseTopKTrainingSAE"
    assert max_cosine(result.sae.W_dec.detach(), atoms).mean() >= 0.9
    from sae_lens import SAE

    assert type(SAE.load_from_disk(str(result.out))).__name__ == "TopKSAE"


def test_tiny_preset_trains_where_the_paper_coefficient_collapses(tmp_path, caplog):
    """DESIGN §4: coefficient 5 on small-norm activations drives L0 to ~0; the trainer warns, and the tiny
    preset (activation normalisation + its own coefficient) trains."""
    x, _ = sparse_dictionary(8192, seed=3)
    store = make_store(tmp_path / "acts", 0.1 * x)  # mean norm ≈ 0.35, like a tiny random backbone
    common = {"d_sae": 128, "batch_size": 256, "progress": False, "log_every": 5}
    with caplog.at_level(logging.WARNING, logger="sae.training"):
        paper = train_sae(
            TrainConfig(store=str(store.root), out=str(tmp_path / "paper"), lr=3e-3, epochs=2, **common)
        )
    assert any("L0 collapsed" in r.message for r in caplog.records)
    assert paper.metadata["warnings"] and paper.metadata["validation"][0]["l0"] < 1.0
    tiny = train_sae(
        TrainConfig(store=str(store.root), out=str(tmp_path / "tiny"), preset="tiny", epochs=10, **common)
    )
    assert tiny.metadata["warnings"] == []
    row = tiny.metadata["validation"][0]
    assert 2.0 < row["l0"] < 20.0 and row["explained_variance"] > 0.7
    assert tiny.metadata["config"]["normalize_activations"] == "expected_average_only_in"


@pytest.mark.parametrize(
    ("architecture", "saved_as"), [("batchtopk", "JumpReLUSAE"), ("jumprelu", "JumpReLUSAE")]
)
def test_other_sae_lens_architectures_train_and_load(synthetic, tmp_path, architecture, saved_as):
    from sae_lens import SAE

    store = synthetic[0]
    cfg = TrainConfig(
        store=str(store.root),
        out=str(tmp_path / architecture),
        architecture=architecture,
        k=4,
        d_sae=64,
        lr=1e-3,
        batch_size=256,
        total_tokens=256 * 20,
        progress=False,
        val_max_tokens=2048,
    )
    result = train_sae(cfg)
    loaded = SAE.load_from_disk(str(result.out))
    assert type(loaded).__name__ == saved_as
    assert result.metadata["architecture"] == architecture and result.validation is not None


def test_paper_defaults_and_schedule():
    """Paper preset: standard SAE, d_sae 65536, coefficient 5, lr 5e-5, 3 % linear warm-up, cosine to 0.1×."""
    from sae.training.saelens import build_trainer, build_training_sae

    cfg = TrainConfig(store="s", out="o", d_sae=64).resolved()
    paper = TrainConfig().resolved()
    assert (paper.architecture, paper.d_sae, paper.l1_coefficient, paper.lr) == ("standard", 65536, 5.0, 5e-5)
    assert (paper.lr_warm_up_fraction, paper.lr_end_fraction, paper.val_fraction) == (0.03, 0.1, 0.05)
    assert paper.normalize_activations == "none" and paper.apply_b_dec_to_input is False
    steps = 200
    sae = build_training_sae(cfg, d_in=8, device="cpu", total_steps=steps)
    assert sae.cfg.l1_coefficient == 5.0 and sae.cfg.lp_norm == 1.0
    trainer = build_trainer(cfg, sae, iter([]), total_steps=steps, rank_batch=16, device="cpu")
    lrs = []
    for _ in range(steps):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    warm = int(0.03 * steps)
    assert lrs[0] == pytest.approx(5e-5 / warm) and max(lrs) == pytest.approx(5e-5)
    assert lrs.index(max(lrs)) == warm - 1
    assert lrs[-1] == pytest.approx(5e-6, rel=0.01)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))
