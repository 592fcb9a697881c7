"""The notebooks run end to end (nbclient) on small injected parameters, and compute what they claim to.

Each notebook is executed in a fresh working directory with its papermill-style "parameters" cell followed
by an injected cell (as papermill does) that shrinks the run: `tiny:qwen2_5_vl` instead of the default stack
(`stack:qwen2_5_vl`, larger images; the stage cache is pointed at an empty folder, which must stay empty), a
few dozen documents, a short SAE and head fit. Any cell error fails the test; the notebook's final
cell writes its headline tables to a JSON file that the test checks. The notebooks are stored with the outputs
of a full run on the default stack (`scripts/refresh_notebooks.py`), and a recorded hash fails the tests when
those were made by other code cells, another package version or another default stack. The kernel runs this interpreter
through a kernel spec written at test time, so nothing has to be registered in the environment.
"""

from __future__ import annotations

import ast
import json
import os
import runpy
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "segcompass-test"
CELL_TIMEOUT_S = 600


def _parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def _assigned_names(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets}


@pytest.fixture
def kernel_env(tmp_path, monkeypatch) -> Path:
    """A kernel spec for this interpreter and an offline, single-threaded kernel environment; returns the
    (empty) warm-up cache folder the notebooks must not build into."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    cache = tmp_path / "warm-cache"
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "SEGCOMPASS_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }.items():
        monkeypatch.setenv(key, value)
    return cache


def run_notebook(name: str, params: dict, workdir: Path) -> float:
    """Execute notebooks/<name> in `workdir` with `params` injected after its parameters cell; returns the
    wall time. Raises (nbclient's CellExecutionError) on any cell error."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    i = _parameters_cell(nb)
    unknown = set(params) - _assigned_names(nb.cells[i].source)
    assert not unknown, f"{name}: injected parameters {sorted(unknown)} are not in its parameters cell"
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, injected)
    workdir.mkdir(parents=True, exist_ok=True)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL, resources={"metadata": {"path": str(workdir)}}
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def _refresh_tool() -> dict:
    """scripts/refresh_notebooks.py's functions (a script, not a package module)."""
    return runpy.run_path(str(ROOT / "scripts" / "refresh_notebooks.py"), run_name="refresh_notebooks")


@pytest.mark.parametrize("name", ["quick_tour.ipynb", "coverage.ipynb"])
def test_notebook_is_stored_with_its_outputs(name: str) -> None:
    """Valid, one parameters cell, every code cell parses and was executed in order without an error, and
    the file stays small enough to read on a code host."""
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    _parameters_cell(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        ast.parse(cell.source)
        assert all(o.get("output_type") != "error" for o in cell.outputs), (
            f"{name}: a stored output is an error"
        )
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{name}: not stored as one run from the top ({counts})"
    assert sum(len(c.outputs) for c in code) >= len(code) // 2, f"{name}: stored without its outputs"
    assert path.stat().st_size < _refresh_tool()["MAX_BYTES"], f"{name}: {path.stat().st_size} bytes"


@pytest.mark.parametrize("name", ["quick_tour.ipynb", "coverage.ipynb"])
def test_notebook_outputs_were_made_by_this_code_and_default_stack(name: str) -> None:
    """The stored outputs record a hash of the code cells, the package version and the backbones the
    parameters cell names (the stack's release key for `stack:`); any change makes them stale."""
    tool = _refresh_tool()
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    why = tool["stale_reason"](nb)
    assert why is None, (
        f"notebooks/{name}: the stored outputs were made by another version ({why}); refresh them with "
        f"`{tool['COMMAND']} {name.removesuffix('.ipynb')}`"
    )


def test_the_notebook_record_follows_code_version_and_stack(monkeypatch) -> None:
    tool = _refresh_tool()
    nb = nbformat.read(NOTEBOOKS / "coverage.ipynb", as_version=4)
    nb.metadata["segcompass"] = tool["record"](nb)
    assert tool["stale_reason"](nb) is None
    assert nb.metadata["segcompass"]["stack"]["BACKBONE"].startswith("vlm-instruct-")  # the stack's release
    edited = nbformat.from_dict(json.loads(json.dumps(nb)))
    next(
        c for c in edited.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])
    ).source += "\n"
    assert "code cells changed" in tool["stale_reason"](edited)
    params = next(c for c in edited.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace('"stack:qwen2_5_vl"', '"warm:qwen2_5_vl"', 1)
    assert "default stack" in tool["stale_reason"](edited)
    monkeypatch.setitem(tool["record"].__globals__, "backbone_identity", lambda spec, seed: f"new-{spec}")
    assert "default stack" in tool["stale_reason"](nb)  # same cells, the spec resolves to another stage


def _auc_rows(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    return {(r["model"], r["ranking"], r["group"]): r for r in rows}


@pytest.mark.slow  # ~1 min on 2 idle cores
@pytest.mark.timeout(900)
def test_quick_tour_runs(tmp_path, kernel_env) -> None:
    out = tmp_path / "quick_tour.json"
    params = {
        "BACKBONE": "tiny:qwen2_5_vl",
        "CONTROL_BACKBONE": "tiny:qwen2_5_vl",
        "SAE_DOCUMENTS": 96,
        "ANALYSIS_DOCUMENTS": 24,
        "SAE_ATOMS": 512,
        "SAE_EPOCHS": 3.0,
        "HEAD_SAMPLES": 3,
        "HEAD_STEPS": 25,
        "THREADS": 1,
        "RESULTS_JSON": str(out),
    }
    wall = run_notebook("quick_tour.ipynb", params, tmp_path / "work")
    res = json.loads(out.read_text())
    assert not kernel_env.exists() or not any(kernel_env.iterdir()), (
        "the notebook built or copied a cached stage"
    )

    auc = _auc_rows(res["coverage_auc"])
    for model in ("trained", "control"):
        for ranking in ("l0", "mass", "random"):
            for group in ("instances", "referred", "distractor", "background"):
                assert (model, ranking, group) in auc, (model, ranking, group)
        # the random-token baseline's AUC is the budget share's: ≈ 0.5 on the default grid
        assert abs(auc[(model, "random", "instances")]["auc"] - 0.5) < 0.1
    head = res["head"]
    assert head["loss_final"] < head["loss_first"], head
    groups = {(r["model"], r["group"]) for r in res["sparsity"]}
    assert {("trained", "instruction"), ("control", "instruction")} <= groups
    assert any(g.startswith("image") for _, g in groups)
    naming = {(r["model"], r["modality"], r["labels"]) for r in res["naming"]}
    assert ("trained", "all", "own") in naming and ("control", "all", "own") in naming
    assert res["provenance"]["top_atoms"], res["provenance"]
    print(f"quick_tour.ipynb executed in {wall:.0f} s")


@pytest.mark.slow  # ~40 s on 2 idle cores
@pytest.mark.timeout(900)
def test_coverage_notebook_runs(tmp_path, kernel_env) -> None:
    out = tmp_path / "coverage.json"
    params = {
        "PIPELINE_OUT": "",  # never read a real runs/default: build the small run
        "BACKBONE": "tiny:qwen2_5_vl",
        "CONTROL_BACKBONE": "tiny:qwen2_5_vl",
        "SAE_DOCUMENTS": 64,
        "ANALYSIS_DOCUMENTS": 24,
        "SAE_EPOCHS": 3.0,
        "K_GRID": [10, 25, 50, 75, 100],
        "SEEDS": 3,
        "THREADS": 1,
        "RESULTS_JSON": str(out),
    }
    wall = run_notebook("coverage.ipynb", params, tmp_path / "work")
    res = json.loads(out.read_text())
    assert not kernel_env.exists() or not any(kernel_env.iterdir()), (
        "the notebook built or copied a cached stage"
    )

    assert res["models"] == ["trained", "control"]
    assert "small pipeline run" in res["source"]
    assert res["k_grid"] == [10.0, 25.0, 50.0, 75.0, 100.0]
    auc = _auc_rows(res["auc"])
    groups = {g for _, _, g in auc}
    assert {"instances", "referred", "distractor", "background"} <= groups
    assert any(g.startswith("size:") for g in groups)
    for model in ("trained", "control"):
        for ranking in ("l0", "mass", "random"):
            assert (model, ranking, "instances") in auc
        rnd = auc[(model, "random", "instances")]
        assert abs(rnd["auc"] - rnd["random_auc"]) < 1e-9 and rnd["auc_gain"] == 0
    # the pipeline's outputs were found by what they record, and the notebook reads them again when
    # pointed at that folder (as it would at runs/default)
    params = {**params, "PIPELINE_OUT": str(tmp_path / "work" / "coverage_run"), "BACKBONE": "unused"}
    run_notebook("coverage.ipynb", params, tmp_path / "again")
    again = json.loads(out.read_text())
    assert "default pipeline's outputs" in again["source"]
    again_auc = _auc_rows(again["auc"])
    assert again_auc.keys() == auc.keys()
    for key, row in auc.items():  # same stores, SAEs and seeds: the same numbers
        assert again_auc[key]["auc"] == pytest.approx(row["auc"]), key
    print(f"coverage.ipynb executed in {wall:.0f} s")
