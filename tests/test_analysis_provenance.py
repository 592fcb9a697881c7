"""Slot provenance on a hand-built provenance record with known answers (analysis/provenance/core.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _browser_check import assert_renders, find_chromium
from _report_check import first_figure, page_tables, page_verdict

from analysis.provenance.core import (
    TokenInfo,
    entry_table,
    heatmap_to_pixels,
    patch_grid,
    pixel_map,
    provenance_figure,
    slot_atoms,
    token_contributions,
)
from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType
from segcompass.head.outputs import SampleProvenance

GEOM = ImageGeometry((16, 16), (16, 16), (0, 0), (2, 2), 8)


def _record() -> tuple[SampleProvenance, TokenInfo]:
    """Tokens 0-3: the 2×2 image patches; 4, 5: text. Support: (0, atom 7, 2), (0, atom 3, 1), (4, atom 7, 1),
    (5, atom 9, −3). Slot 0 attends 0.5 / 0.25 / 0.25 to tokens 0 / 4 / 5; slot 1 only to token 5."""
    prov = SampleProvenance(
        token_idx=torch.tensor([0, 0, 4, 5]),
        atom_idx=torch.tensor([7, 3, 7, 9]),
        values=torch.tensor([2.0, 1.0, 1.0, -3.0]),
        concept_tokens=torch.tensor([0, 4, 5]),
        entry_concept=torch.tensor([0, 0, 1, 2]),
        slot_attention=torch.tensor([[[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]]),
    )
    types = np.array([TokenType.IMAGE] * 4 + [TokenType.INSTRUCTION, TokenType.COT])
    rc = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [-1, -1], [-1, -1]])
    return prov, TokenInfo(types, rc, GEOM, ["<i>"] * 4 + ["red", "circle"])


def test_atoms_tokens_patches_and_pixels_by_hand() -> None:
    prov, tokens = _record()
    atoms = slot_atoms(prov)
    s0 = atoms[atoms.slot == 0].set_index("atom")
    # atom 7: 0.5·2 + 0.25·1 = 1.25; atom 9: 0.25·3 = 0.75; atom 3: 0.5·1 = 0.5 (total 2.5)
    assert list(s0.index) == [7, 9, 3]
    assert s0["score"].tolist() == pytest.approx([1.25, 0.75, 0.5])
    assert s0["share"].tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert s0.loc[7, "tokens"] == 2
    ref_atoms, ref_scores = prov.atom_scores(0)  # the head's own ranking agrees
    assert ref_atoms.tolist() == [7, 9, 3] and ref_scores.tolist() == pytest.approx([1.25, 0.75, 0.5])
    s1 = atoms[atoms.slot == 1]
    assert s1["atom"].iloc[0] == 9 and s1["score"].iloc[0] == pytest.approx(3.0)
    per_token = token_contributions(prov, 0, tokens).set_index("token")
    assert per_token.loc[0, "contribution"] == pytest.approx(1.5)
    assert per_token.loc[5, "text"] == "circle" and per_token.loc[5, "token_type"] == "cot"
    grid = patch_grid(prov, 0, tokens)
    assert grid.tolist() == [[1.5, 0.0], [0.0, 0.0]]
    pixels = pixel_map(grid, GEOM)
    assert pixels.shape == (16, 16) and pixels[:8, :8].min() == 1.5 and pixels[8:, :].max() == 0
    entries = entry_table(prov, tokens)
    img = entries[(entries.slot == 0) & (entries.token == 0)]
    assert img[["x0", "y0", "x1", "y1"]].iloc[0].tolist() == [0, 0, 8, 8]
    assert entries[entries.token == 4]["x0"].isna().all()


def test_heatmap_letterbox_to_pixels_and_figure() -> None:
    prov, tokens = _record()
    wide = ImageGeometry((8, 16), (8, 16), (0, 0), (1, 2), 8)
    hm = torch.zeros(32, 32)
    hm[:16, :16] = 5.0  # left half of the 32×16 letterboxed image
    px = heatmap_to_pixels(hm, wide.original_size)
    assert (
        px.shape == (8, 16)
        and px[:, :7].min() == pytest.approx(5.0)
        and px[:, 9:].max() == pytest.approx(0.0)
    )
    fig = provenance_figure(
        prov, 0, tokens, image=np.zeros((16, 16, 3), np.uint8), heatmap=torch.zeros(32, 32)
    )
    kinds = [t.type for t in fig.data]
    assert kinds.count("bar") == 2 and "image" in kinds and kinds.count("heatmap") == 2


# ---------------------------------------------------------------- the provenance report and its command
@pytest.fixture(scope="module")
def records():
    """One attributed + causally checked sample of a tiny head, and the same sample attention-only."""
    from _head_common import make_head, make_inputs

    from analysis.attribution.causal import CausalConfig, causal_check
    from analysis.attribution.core import attribute
    from analysis.attribution.head_inputs import HeadInputs
    from analysis.provenance.report import ProvenanceRecord

    torch.set_num_threads(1)
    head = make_head(aggregator_layers=2).eval()
    x = make_inputs(head, batch=1, seq=6)
    _, tokens = _record()
    image = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    inputs = HeadInputs(
        x["hook_states"],
        x["concentration_states"],
        x["image_embeddings"],
        tokens=[tokens],
        images=[image],
        sample_ids=["circle<1>"],
    )
    att = attribute(head, inputs)
    checked = causal_check(
        head, inputs, att, CausalConfig(n_atoms=(1,), seeds=1, slots=(1,), n_boot=50, progress=False)
    )
    return (
        head,
        inputs,
        [ProvenanceRecord(inputs, att.reference, att, checked), ProvenanceRecord(inputs, att.reference)],
    )


def test_provenance_report_is_atomic_with_figures_and_tables(records, tmp_path, monkeypatch) -> None:
    import pandas as pd

    import analysis.report.html as report_mod
    from analysis.provenance.report import provenance_report

    _, _, recs = records
    files = provenance_report(recs, tmp_path, metadata={"checkpoint": "none"})
    page = files.html.read_text()
    assert page.count("plotly.js v") == 1 and 'src="http' not in page
    assert page.count('id="figure-') == 3  # one per sample + the causal check
    assert "Sample 0: circle&lt;1&gt;" in page and "instruction: red" in page and "Causal check" in page
    assert sorted(files.tables) == ["atoms", "causal", "causal_summary", "slots", "tokens"]
    for name, paths in files.tables.items():
        assert [p.suffix for p in paths] == [".csv", ".parquet"]
        assert len(pd.read_csv(paths[0])) == len(pd.read_parquet(paths[1])) > 0, name
    atoms = pd.read_parquet(files.tables["atoms"][1])
    assert set(atoms["sample"]) == {0, 1} and atoms.loc[atoms["sample"] == 1, "act_grad"].isna().all()
    assert atoms.loc[atoms["sample"] == 0, "act_grad"].notna().all()
    slots = pd.read_csv(files.tables["slots"][0])
    assert len(slots) == 4 and slots["top_atoms_act_grad"].str.len().gt(0).all()
    # the verdict: the causal check's largest n, from the summary table; no control in this report
    verdict = page_verdict(page)
    summary = pd.read_parquet(files.tables["causal_summary"][1])
    metric = "gt_iou_drop" if "gt_iou_drop" in set(summary["metric"]) else "iou_drop"
    row = summary[summary["metric"] == metric].sort_values("n").iloc[-1]
    assert verdict.values == {"headline": row["top_mean"], "baseline": row["random_mean"], "control": None}
    assert (
        f"paired difference {row['diff_mean']:+.3f} [{row['diff_ci_low']:+.3f}, {row['diff_ci_high']:+.3f}]"
        in (verdict.sentence)
    )
    assert verdict.sentence.endswith("Control not run.") and verdict.start < first_figure(page)
    tables = page_tables(page)
    assert len(tables) == len(set(tables)) and page.index(tables[0]) > first_figure(page)
    untested = page_verdict(provenance_report(recs[1:], tmp_path / "attention_only").html.read_text())
    assert untested.sentence.startswith("The causal check was not run") and untested.values["control"] is None
    before = files.html.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_mod.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        provenance_report(recs[1:], tmp_path)
    monkeypatch.undo()
    assert files.html.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temporary file left behind


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed")
def test_provenance_report_renders_in_headless_chromium(records, tmp_path) -> None:
    from analysis.provenance.report import provenance_report

    files = provenance_report(records[2], tmp_path)
    assert_renders(files.html, figures=3)


def test_provenance_command(records, tmp_path, monkeypatch, capsys) -> None:

    import pandas as pd

    import analysis.provenance.command as provenance_command
    from analysis.cli import main

    head, inputs, _ = records
    argv = ["provenance", "--dataset", "reasonseg", "--out", str(tmp_path / "out"), "--progress", "false"]
    assert main([*argv, "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "checkpoint folder" in capsys.readouterr().err

    class Model:  # what segcompass.model.load_model returns
        def __init__(self) -> None:
            self.head = head

        def head_inputs(self, samples):
            return inputs.select([0] * len(samples))

    import segcompass.model

    assert main([*argv, "--checkpoint", str(tmp_path)]) == 2
    assert "holds no SegCompass model" in capsys.readouterr().err
    monkeypatch.setattr(segcompass.model, "load_model", lambda path: object())
    assert main([*argv, "--checkpoint", str(tmp_path)]) == 2
    assert "lacks .head / .head_inputs" in capsys.readouterr().err
    monkeypatch.setattr(segcompass.model, "load_model", lambda path: Model())
    monkeypatch.setattr(provenance_command, "load_samples", lambda cfg: ["s0"])
    assert main([*argv, "--checkpoint", str(tmp_path), "--causal", "false", "--top", "3"]) == 0
    assert (
        f"Provenance report: {(tmp_path / 'out' / 'provenance.html').absolute()}" in capsys.readouterr().out
    )
    assert len(pd.read_parquet(tmp_path / "out" / "provenance" / "provenance_slots.parquet")) == 2
    monkeypatch.undo()
    with pytest.raises(provenance_command.AnalysisInputError, match="not valid JSON"):
        provenance_command.load_samples(
            provenance_command.ProvenanceReportConfig(checkpoint="", dataset="x", data_args="{")
        )
