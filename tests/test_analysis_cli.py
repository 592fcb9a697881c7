"""`segcompass-analyze coverage` / `sparsity` end to end on constructed inputs, and their bad-input errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from _analysis_common import D_IN, exact_sae, make_store, random_sae, save_sae, write_corpus
from _browser_check import assert_renders, find_chromium
from _faults import make_unwritable
from _report_check import first_figure, page_tables, page_verdict

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


@pytest.fixture(scope="module")
def reports(inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Coverage and sparsity reports with the control, written by the commands."""
    out = tmp_path_factory.mktemp("reports")
    common = ["--sae", str(inputs["sae"]), "--store", str(inputs["store"]), "--out", str(out)]
    common += ["--control-store", str(inputs["control"]), "--control-sae", str(inputs["control_sae"])]
    common += ["--bootstrap", "200", "--progress", "false"]
    assert main(["coverage", *common, *FAST[:-2]]) == 0
    assert main(["sparsity", *common]) == 0
    return out


def test_coverage_report_opens_with_the_verdict_its_tables_carry(reports: Path) -> None:
    page = (reports / "coverage.html").read_text()
    verdict = page_verdict(page)
    auc = pd.read_parquet(reports / "coverage" / "coverage_auc.parquet").set_index(
        ["model", "ranking", "group"]
    )
    head = auc.loc[("trained", "l0", "referred")]
    assert verdict.values == {
        "headline": head["auc"],
        "baseline": auc.loc[("trained", "random", "referred"), "auc"],
        "control": auc.loc[("control", "l0", "referred"), "auc"],
    }
    assert head["auc_ci_low"] <= head["auc"] <= head["auc_ci_high"] and head["gain_ci_low"] > 0
    # the exact SAE fires on the instances: the sentence reads the effect and carries the table's figures
    assert verdict.sentence.startswith("Referred instances are covered better than random tokens: AUC ")
    assert f"{head['auc']:.3f} [{head['auc_ci_low']:.3f}, {head['auc_ci_high']:.3f}]" in verdict.sentence
    assert (
        f"gain {head['auc_gain']:+.3f} [{head['gain_ci_low']:+.3f}, {head['gain_ci_high']:+.3f}]"
        in verdict.sentence
    )
    control = auc.loc[("control", "l0", "referred")]
    assert "random-init control" in verdict.sentence and f"AUC {control['auc']:.3f}" in verdict.sentence
    contrast = pd.read_parquet(reports / "coverage" / "coverage_contrasts.parquet").set_index(
        ["model", "ranking"]
    )
    c = contrast.loc[("trained", "l0")]
    assert any(
        f"{c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" in n for n in verdict.notes
    )
    # the gain by instance size, from the size rows of the same table
    sizes = auc.loc[("trained", "l0")]
    sizes = sizes[sizes.index.str.startswith("size:")]
    size_note = next(
        n for n in verdict.notes if n.startswith("trained, l0, gain over random tokens by instance")
    )
    assert len(sizes) > 0 and all(
        f"{g.removeprefix('size:')} {r['auc_gain']:+.3f} [{r['gain_ci_low']:+.3f}, {r['gain_ci_high']:+.3f}]"
        in size_note
        for g, r in sizes.iterrows()
    )
    # verdict, then the curves, then the tables — each table once
    tables = page_tables(page)
    assert verdict.start < first_figure(page) < page.index(tables[0])
    assert len(tables) == len(set(tables)) == 4 and page.count("<th>auc_ci_low</th>") == 1


def test_sparsity_report_opens_with_the_verdict_its_tables_carry(reports: Path) -> None:
    page = (reports / "sparsity.html").read_text()
    verdict = page_verdict(page)
    summary = pd.read_parquet(reports / "sparsity" / "sparsity_summary.parquet").set_index(["model", "group"])
    assert verdict.values == {
        "headline": summary.loc[("trained", "image_instance"), "mean_l0"],
        "baseline": summary.loc[("trained", "image_background"), "mean_l0"],
        "control": summary.loc[("control", "image_instance"), "mean_l0"],
    }
    contrast = pd.read_parquet(reports / "sparsity" / "sparsity_contrasts.parquet").set_index(
        ["model", "measure"]
    )
    diff = contrast.loc[("trained", "mean_l0")]
    assert (
        diff["difference"] == 1.0 and diff["ci_low"] == diff["ci_high"] == 1.0
    )  # one atom on every instance token
    assert verdict.sentence.startswith(
        "Instance image tokens activate more atoms than background ones: mean L0 "
    )
    assert (
        f"difference {diff['difference']:+.3f}" in verdict.sentence
        and "the CIs do not overlap" in verdict.sentence
    )
    assert "Random-init control:" in verdict.sentence
    tables = page_tables(page)
    assert verdict.start < first_figure(page) < page.index(tables[0]) and len(tables) == len(set(tables)) == 3


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed (.ci/run installs it)")
@pytest.mark.parametrize("name", ["coverage", "sparsity"])
def test_report_renders_in_headless_chromium(reports: Path, name: str) -> None:
    check = assert_renders(reports / f"{name}.html", figures=1)
    assert 'id="verdict"' in check.dom


def test_coverage_command_writes_report_with_control(inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    argv = ["coverage", "--sae", str(inputs["sae"]), "--store", str(inputs["store"]), "--out", str(out)]
    argv += ["--control-store", str(inputs["control"]), "--control-sae", str(inputs["control_sae"]), *FAST]
    assert main(argv) == 0  # instance masks found through the store's data path
    printed = capsys.readouterr().out
    assert f"Coverage report: {(out / 'coverage.html').absolute()}" in printed
    assert (
        "coverage AUC of referred instances (trained backbone" in printed and "random-init control" in printed
    )
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
    verdict = page_verdict((out / "sparsity.html").read_text())  # no control: the verdict says so
    assert verdict.values["control"] is None and verdict.sentence.endswith("Control not run.")
    assert '<div class="value">control not run</div>' in (out / "sparsity.html").read_text()


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
