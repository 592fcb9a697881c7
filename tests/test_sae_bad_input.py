"""Bad input to `segcompass-sae train`: each a clear error, and nothing already on disk is changed."""

from __future__ import annotations

import errno
import hashlib
import json
import os

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


def test_unparseable_manifest_is_one_sentence_naming_it(store, tmp_path, capsys):
    """#23.4: a damaged manifest.json names the file (not a bare "Unterminated string ..."); --debug adds
    the traceback."""
    manifest = store.root / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    argv = ["train", "--store", str(store.root), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"store manifest {manifest} is damaged and cannot be parsed (Unterminated string" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith(
        "segcompass-sae train: error: store manifest"
    )
    assert not (tmp_path / "out").exists()


def test_full_disk_while_checkpointing_is_one_sentence_and_leaves_no_temporary(
    store, tmp_path, capsys, monkeypatch
):
    """#23.4: ENOSPC while a checkpoint is written: one sentence naming the checkpoint and what to do, the
    half-written checkpoint folder is removed at once, and --resume continues from the last complete one."""
    import torch

    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(str(f))
        if len([c for c in calls if "checkpoints" in c]) == 3:  # the second checkpoint runs out of space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "out"
    run = {**FAST, "epochs": 4, "checkpoint_every_tokens": 128 * 10, "keep_checkpoints": 0, "progress": False}
    argv = ["train", "--store", str(store.root), "--out", str(out)]
    for k, v in run.items():
        argv += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no space left to write" in err and str(out / "checkpoints" / "tokens-") in err, err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["tokens-000000000001280"]  # no .tmp- folder
    monkeypatch.undo()
    assert main([*argv, "--resume", "true"]) == 0
    assert (out / "segcompass_sae.json").exists()
