"""Bad input to `segcompass-sae train`: each a clear error, and nothing already on disk is changed."""

from __future__ import annotations

import hashlib
import json

import pytest
from _sae_common import make_store, sparse_dictionary
from safetensors import safe_open
from safetensors.torch import save_file

from sae.cli import main
from sae.training import TrainConfig, train_sae

FAST = {"d_sae": 64, "batch_size": 128, "lr": 1e-3, "progress": False, "val_max_tokens": 0}


@pytest.fixture
def store(tmp_path):
    x, _ = sparse_dictionary(4096, seed=11)
    return make_store(tmp_path / "acts", x, shard_tokens=1024)


def _files(path):
    return {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_sae_width_differs_from_store(store, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match="the SAE expects d_in=64 but the store holds activations of width 32"
    ):
        train_sae(TrainConfig(store=str(store.root), out=str(out), d_in=64, **FAST))
    assert not out.exists()


def test_store_with_nan_is_refused(store, tmp_path):
    shard = store.manifest.shards[1]
    path = store.root / shard.file
    with safe_open(str(path), framework="pt") as f:
        tensors, header = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
    tensors["activations"][7, 3] = float("nan")
    save_file(tensors, path, metadata=header)
    manifest = json.loads((store.root / "manifest.json").read_text())
    for s in manifest["shards"]:
        if s["file"] == shard.file:
            s["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="NaN"):
        train_sae(TrainConfig(store=str(store.root), out=str(out), **FAST))
    assert _files(out) == {"notes.txt": b"keep me"}


def test_empty_token_type_filter(store, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="token_types is empty"):
        train_sae(TrainConfig(store=str(store.root), out=str(out), token_types=[], **FAST))
    with pytest.raises(ValueError, match=r"filter \['concentration'\] selects no tokens"):
        train_sae(TrainConfig(store=str(store.root), out=str(out), token_types=["concentration"], **FAST))
    with pytest.raises(ValueError, match="unknown token type 'pictures'"):
        train_sae(TrainConfig(store=str(store.root), out=str(out), token_types=["pictures"], **FAST))
    assert not out.exists()
    argv = ["train", "--store", str(store.root), "--out", str(out), "--token-types", "concentration"]
    assert main(argv) == 2
    assert "selects no tokens" in capsys.readouterr().err
    assert not out.exists()


def test_token_type_filter_trains_on_those_tokens_only(store, tmp_path):
    result = train_sae(
        TrainConfig(store=str(store.root), out=str(tmp_path / "out"), token_types=["cot"], **FAST)
    )
    assert result.metadata["trained_token_type_counts"] == {"cot": store.num_tokens(["cot"])}
    assert result.tokens == int(store.num_tokens(["cot"]) * 0.95) // 128 * 128


def test_impossible_batch_and_slices(store, tmp_path):
    with pytest.raises(ValueError, match="must be divisible by data_slices=3"):
        train_sae(TrainConfig(store=str(store.root), out=str(tmp_path / "o"), data_slices=3, **FAST))
    with pytest.raises(ValueError, match="no full batch"):
        train_sae(
            TrainConfig(
                store=str(store.root),
                out=str(tmp_path / "o2"),
                **{**FAST, "batch_size": 4096},
                total_tokens=8192,
            )
        )
