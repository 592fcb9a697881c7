"""`segcompass-analyze coverage` / `sparsity` end to end on constructed inputs, and their bad-input errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from _analysis_common import D_IN, exact_sae, make_store, random_sae, save_sae, write_corpus
from _faults import make_unwritable

from analysis.cli import main

N_DOCS = 8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(root / "corpus", N_DOCS)
    make_store(root / "store", N_DOCS, data={"path": str(corpus), "kind": "records"})
    make_store(root / "control", N_DOCS, random_acts=True, backbone="tiny:test-random-init")
    make_store(root / "nogeom", 2, geometry=False)
    meta = {"backbone": "tiny:test", "hook_layer": 2, "d_in": D_IN}
    return {
        "root": root,
        "corpus": corpus,
        "store": root / "store",
        "control": root / "control",
        "nogeom": root / "nogeom",
        "sae": save_sae(exact_sae(), root / "sae", **meta),
        "control_sae": save_sae(
            random_sae(), root / "control_sae", **{**meta, "backbone": "tiny:test-random-init"}
        ),
        "bare_sae": save_sae(exact_sae(), root / "bare_sae"),
        "layer5_sae": save_sae(exact_sae(), root / "layer5", **{**meta, "hook_layer": 5}),
        "other_sae": save_sae(
            exact_sae(), root / "other", **{**meta, "backbone": "Qwen/Qwen2.5-VL-7B-Instruct"}
        ),
    }


FAST = ["--seeds", "2", "--k-grid", "10", "25", "50", "100", "--progress", "false"]


def test_coverage_command_writes_report_with_control(inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    argv = ["coverage", "--sae", str(inputs["sae"]), "--store", str(inputs["store"]), "--out", str(out)]
    argv += ["--control-store", str(inputs["control"]), "--control-sae", str(inputs["control_sae"]), *FAST]
    assert main(argv) == 0  # instance masks found through the store's data path
    printed = capsys.readouterr().out
    assert f"Coverage report: {(out / 'coverage.html').absolute()}" in printed
    assert "trained: coverage AUC" in printed and "control: coverage AUC" in printed
    auc = pd.read_parquet(out / "coverage" / "coverage_auc.parquet")
    assert set(auc.model) == {"trained", "control"}
    assert (out / "coverage" / "coverage_curves.csv").exists() and "main-svg" not in (
        out / "coverage.html"
    ).read_text()[:100]


def test_sparsity_command(inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sp"
    argv = ["sparsity", "--sae", str(inputs["bare_sae"]), "--store", str(inputs["store"]), "--out", str(out)]
    assert main([*argv, "--corpus", str(inputs["corpus"]), "--bootstrap", "50", "--progress", "false"]) == 0
    assert f"Sparsity report: {(out / 'sparsity.html').absolute()}" in capsys.readouterr().out
    summary = pd.read_csv(out / "sparsity" / "sparsity_summary.csv").set_index("group")
    assert (
        summary.loc["image_instance", "mean_l0"] == 1.0 and summary.loc["image_background", "mean_l0"] == 0.0
    )


@pytest.mark.parametrize(
    ("sae", "store", "extra", "message"),
    [
        ("layer5_sae", "store", [], "hook layer 5"),
        ("other_sae", "store", [], "backbone 'Qwen/Qwen2.5-VL-7B-Instruct'"),
        ("sae", "nogeom", ["--corpus", "CORPUS"], "no image geometry"),
        ("sae", "store", ["--corpus", "EMPTY"], "no document"),
        ("sae", "store", ["--control-store", "CONTROL"], "--control-sae"),
        ("sae", "store", ["--rank-by", "atoms"], "--atoms"),
        ("sae", "store", ["--corpus", "CORPUS", "--coco", "x.json"], "not both"),
    ],
)
def test_coverage_bad_input_is_a_clear_error(
    inputs, tmp_path: Path, capsys, sae, store, extra, message
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "corpus.jsonl").write_text('{"id": "elsewhere", "instances": []}\n')
    subst = {"CORPUS": str(inputs["corpus"]), "EMPTY": str(empty), "CONTROL": str(inputs["control"])}
    extra = [subst.get(a, a) for a in extra]
    argv = [
        "coverage",
        "--sae",
        str(inputs[sae]),
        "--store",
        str(inputs[store]),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, *extra, *FAST]) == 2
    err = capsys.readouterr().err
    assert "segcompass-analyze coverage: error:" in err and message in err, err
    assert not (tmp_path / "o" / "coverage.html").exists()


def test_d_in_mismatch(inputs, tmp_path: Path, capsys) -> None:
    from sae_lens import StandardSAE, StandardSAEConfig

    wide = save_sae(StandardSAE(StandardSAEConfig(d_in=D_IN + 1, d_sae=4)), tmp_path / "wide")
    argv = ["sparsity", "--sae", str(wide), "--store", str(inputs["store"]), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert f"d_in={D_IN + 1}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["coverage", "sparsity"])
def test_truncated_shard_is_one_sentence_naming_it(inputs, tmp_path: Path, capsys, command) -> None:
    """#23.4: the analyses read shards through the store's checksum check, so a truncated shard is named
    (not a safetensors traceback from the first read of its header)."""
    store = tmp_path / "store"
    shutil.copytree(inputs["store"], store)
    shard = sorted((store / "shards").iterdir())[0]
    shard.write_bytes(shard.read_bytes()[:50])
    argv = [command, "--sae", str(inputs["sae"]), "--store", str(store), "--out", str(tmp_path / "o")]
    assert main([*argv, "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert f"shard {shard} is corrupt or truncated" in err and "capture the store again" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["coverage", "sparsity"])
def test_unwritable_out_is_refused_before_the_computation(
    inputs, tmp_path: Path, capsys, monkeypatch, command
) -> None:
    """#23.4: an output folder that cannot be written is one sentence naming it, found before the analysis
    runs (not a traceback after the whole computation)."""
    import analysis.coverage.command as coverage_command
    import analysis.sparsity.command as sparsity_command

    out = tmp_path / "readonly"
    make_unwritable(out, monkeypatch)
    computed = []
    for commands, name in (
        (coverage_command, "coverage_with_controls"),
        (sparsity_command, "sparsity_with_controls"),
    ):
        real = getattr(commands, name)
        monkeypatch.setattr(commands, name, lambda *a, _real=real, **k: computed.append(1) or _real(*a, **k))
    argv = [command, "--sae", str(inputs["sae"]), "--store", str(inputs["store"]), "--out", str(out)]
    assert main([*argv, "--corpus", str(inputs["corpus"]), *FAST[-2:]]) == 2
    err = capsys.readouterr().err
    assert (
        f"cannot write {out}" in err and "Permission denied" in err and len(err.strip().splitlines()) == 1
    ), err
    assert computed == []
