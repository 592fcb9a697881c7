"""Atom naming on constructed inputs with known answers: labels, purity, held-out consistency, the top-k
reservoir against a dense sort, chunking invariance, bad input, and the `atoms` command's report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _analysis_common import CELL, GEOMETRY, GRID, SIZE, cell_mask, save_sae
from _browser_check import assert_renders, find_chromium
from _report_check import first_figure, page_tables, page_verdict
from PIL import Image

from analysis.atoms.naming import (
    NamingConfig,
    atom_table,
    consistency_summary,
    name_atoms,
    naming_with_controls,
)
from analysis.atoms.stream import AtomEncoder, TopKReservoir
from analysis.cli import main
from analysis.common.inputs import AnalysisInputError, LoadedSAE
from analysis.common.instances import InstanceIndex
from sae.store import ActivationStore, CapturedDocument, StoreMetadata, StoreWriter, finalize_store
from sae.token_types import TokenType
from segcompass.world.masks import encode_rle

torch.set_num_threads(1)

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30)}
SHAPES = ["circle", "square", "triangle"]
CELLS_PER_COLOUR = {"red": 3, "blue": 2, "green": 1}
VOCAB = {10: " red", 11: " circle", 12: " the", 13: " blue", 14: " square"}
TEXT_IDS = [12, 10, 11, 12, 13, 14]
"""Every document's text tokens: "the red circle the blue square"."""
D_IN = 13
"""Feature dims: 0–2 colour (red, blue, green), 3 background, 4–6 shape, 7 unused, 8–12 the words of VOCAB."""
N_DOCS = 40
VAL = 0.25
"""Held-out fraction: documents 0, 2, 5, 10, … (12 of 40) by the store's doc-id hash."""
FAST = {"progress": False, "val_fraction": VAL, "top_k": 8, "shuffles": 2}


def layout(doc: int) -> dict[str, tuple[str, list[tuple[int, int]]]]:
    """colour → (shape, cells) of document `doc`: shapes rotate with the doc, cells are a seeded draw."""
    perm = np.random.default_rng(doc).permutation(GRID[0] * GRID[1])
    out, start = {}, 0
    for i, (colour, n) in enumerate(CELLS_PER_COLOUR.items()):
        cells = [(int(c) // GRID[1], int(c) % GRID[1]) for c in perm[start : start + n]]
        out[colour] = (SHAPES[(doc + i) % 3], cells)
        start += n
    return out


def write_world(root: Path, n_docs: int, images: bool = True) -> Path:
    """corpus.jsonl (instances with colour, shape, RLE masks) and, optionally, the images."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    lines = []
    for d in range(n_docs):
        pixels = np.full((*SIZE, 3), 128, dtype=np.uint8)
        insts = []
        for i, (colour, (shape, cells)) in enumerate(layout(d).items()):
            m = cell_mask(cells)
            pixels[m] = COLOURS[colour]
            insts.append({"id": i, "shape": shape, "colour": colour, "size_name": "small", "rle": encode_rle(m),
                          "area": int(m.sum()), "target": colour == "red"})  # fmt: skip
        if images:
            Image.fromarray(pixels).save(root / "images" / f"doc-{d}.png")
        lines.append(
            json.dumps({"id": f"doc-{d}", "image": f"images/doc-{d}.png", "text": "t", "instances": insts})
        )
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_store(
    path: Path, n_docs: int, *, random_acts=False, geometry=True, backbone="tiny:test", data=None
):
    """16 image tokens then the 6 text tokens of TEXT_IDS per document; structured or Gaussian states."""
    meta = StoreMetadata(
        backbone=backbone, family="test", hook_layer=2, d_in=D_IN, dtype="float32", data=data or {}
    )
    writer = StoreWriter(path, meta, shard_tokens=100)
    g = torch.Generator().manual_seed(1)
    rc = np.array([(r, c) for r in range(GRID[0]) for c in range(GRID[1])])
    for d in range(n_docs):
        n = len(rc) + len(TEXT_IDS)
        x = torch.zeros(n, D_IN)
        scale = 1 + 0.5 * torch.rand(n, generator=g)  # distinct magnitudes: no ties among the top examples
        background = np.ones(len(rc), dtype=bool)
        for i, (_, (shape, cells)) in enumerate(layout(d).items()):
            for r, c in cells:
                t = r * GRID[1] + c
                x[t, i], x[t, 4 + SHAPES.index(shape)] = 1.0, 1.0
                background[t] = False
        x[np.flatnonzero(background), 3] = 1.0
        for j, tid in enumerate(TEXT_IDS):
            x[len(rc) + j, 8 + tid - 10] = 1.0
        x = x * scale[:, None]
        if random_acts:
            x = torch.randn(n, D_IN, generator=g)
        types = torch.tensor(
            [TokenType.IMAGE] * len(rc) + [TokenType.INSTRUCTION] * len(TEXT_IDS), dtype=torch.int8
        )
        image_rc = torch.full((n, 2), -1, dtype=torch.int16)
        image_rc[: len(rc)] = torch.from_numpy(rc).to(torch.int16)
        token_ids = torch.tensor([0] * len(rc) + TEXT_IDS, dtype=torch.int32)
        writer.add(CapturedDocument(doc_id=d, source_id=f"doc-{d}", text="t", activations=x, token_ids=token_ids,
                                    token_types=types, image_rc=image_rc, geometry=GEOMETRY if geometry else None))  # fmt: skip
    writer.close()
    finalize_store(path, meta)
    return ActivationStore.open(path)


ATOMS = {
    0: ("red", "colour", 0),
    1: ("circle", "shape", 4),
    2: ("background", "background", 3),
    3: ("red", "token", 8),
}
"""Exact SAE: atom → (label, kind, the input dim it reads); atom 4 never fires."""


def exact_sae(d_in: int = D_IN):
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=5, apply_b_dec_to_input=False))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        for atom, (_, _, dim) in ATOMS.items():
            sae.W_enc[dim, atom] = 1.0
    return sae


def random_sae(d_sae: int = 24, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=d_sae, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.zero_()
    return sae


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("naming")
    corpus = write_world(root / "corpus", N_DOCS)
    meta = {"backbone": "tiny:test", "hook_layer": 2, "d_in": D_IN}
    return {
        "root": root,
        "corpus": corpus,
        "instances": InstanceIndex.from_corpus(corpus),
        "store": write_store(root / "store", N_DOCS, data={"path": str(corpus), "kind": "records"}),
        "random_store": write_store(
            root / "random", N_DOCS, random_acts=True, backbone="tiny:test-random-init"
        ),
        "nogeom": write_store(root / "nogeom", 4, geometry=False),
        "sae": save_sae(exact_sae(), root / "sae", **meta),
        "random_sae": save_sae(random_sae(), root / "rsae", **{**meta, "backbone": "tiny:test-random-init"}),
    }


def test_exact_atoms_get_their_labels_with_purity_and_auc_one(world) -> None:
    res = name_atoms(world["store"], exact_sae(), world["instances"], NamingConfig(**FAST), tokenizer=VOCAB)
    t = res.table.set_index("atom")
    for atom, (label, kind, _) in ATOMS.items():
        row = t.loc[atom]
        assert (row.label, row.label_kind, row.purity) == (label, kind, 1.0), row
        assert row.auc == 1.0 and row.precision == 1.0 and row.recall == 1.0, row
        assert row.n_examples == 8 and row.val_positives > 0
    assert t.loc[0, "modality"] == "image" and t.loc[3, "modality"] == "text"
    assert t.loc[0, "frequency"] == pytest.approx(3 / 22)  # 3 red cells of 16 + 6 text tokens
    assert np.isnan(t.loc[4, "auc"]) and pd.isna(t.loc[4, "label"]) and t.loc[4, "frequency"] == 0
    ex = res.examples
    assert (ex.loc[ex.atom == 3, "context"].str.contains(r"\[\[ red\]\]")).all()
    red = ex[ex.atom == 0]
    assert (red.token_type == "image").all() and ((red.x1 - red.x0) == CELL).all()
    assert set(red.source_id) <= {f"doc-{d}" for d in range(N_DOCS)}
    assert set(np.unique(red.doc_id)) & {0, 2, 5, 10} == set()  # examples come from training documents only
    summary = consistency_summary([res]).set_index(["modality", "labels"])
    assert summary.loc[("image", "own"), "mean_auc"] == 1.0 > summary.loc[("image", "shuffled"), "mean_auc"]


def test_random_sae_on_random_states_is_at_chance(world) -> None:
    res = name_atoms(world["random_store"], random_sae(), world["instances"], NamingConfig(**FAST))
    aucs = res.table["auc"].dropna()
    assert len(aucs) >= 10
    assert abs(aucs.mean() - 0.5) < 0.08
    assert (res.table["purity"].dropna() < 1).mean() > 0.5


def test_reservoir_equals_a_stable_dense_sort_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randint(0, 4, (57, 6), generator=g).float()
    order = torch.sort(h.T, dim=1, descending=True, stable=True)
    for block in (1, 5, 57):
        res = TopKReservoir(6, 7)
        for s in range(0, 57, block):
            res.update(h[s : s + block], torch.arange(s, min(s + block, 57)))
        assert torch.equal(res.values, order.values[:, :7]) and torch.equal(res.ids, order.indices[:, :7])


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk"])
def test_atom_encoder_slices_equal_full_encode(kind: str) -> None:
    import sae_lens

    cls, cfg_cls, extra = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 3}),
    }[kind]
    torch.manual_seed(0)
    sae = cls(cfg_cls(d_in=D_IN, d_sae=9, **extra))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.5)
        if kind == "jumprelu":
            sae.threshold.abs_()
    enc = AtomEncoder(LoadedSAE(sae))
    assert enc.full_width_only == (kind == "topk")
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        full = sae.encode(x)
    for atoms in (torch.tensor([2, 3, 4, 5]), torch.tensor([7, 0, 3])):
        torch.testing.assert_close(enc(x, atoms), full[:, atoms])


def test_store_examples_equal_brute_force(world) -> None:
    store, sae = world["random_store"], random_sae()
    cfg = NamingConfig(
        top_k=4, val_fraction=0, image_labels=False, progress=False, atom_chunk=5, chunk_elements=40
    )
    ex = name_atoms(store, sae, None, cfg).examples
    shards = [store.load_shard(s) for s in store.manifest.shards]
    x = torch.cat([s["activations"] for s in shards])
    doc = torch.cat([s["doc_id"] for s in shards])
    pos = torch.cat([s["position"] for s in shards])
    with torch.no_grad():
        h = sae.encode(x)
    for atom in range(sae.cfg.d_sae):
        vals, idx = torch.sort(h[:, atom], descending=True, stable=True)
        keep = idx[:4][vals[:4] > 0]
        got = ex[ex.atom == atom].sort_values("rank")
        assert got.doc_id.tolist() == doc[keep].tolist() and got.position.tolist() == pos[keep].tolist()
        np.testing.assert_allclose(got.activation, h[keep, atom].numpy(), rtol=1e-5)


def test_chunking_does_not_change_results(world) -> None:
    args = (world["store"], random_sae(d_sae=10), world["instances"])
    base = name_atoms(*args, NamingConfig(**FAST))
    for chunks in [
        {"atom_chunk": 3, "atoms_per_pass": 4, "chunk_elements": 21},
        {"atom_chunk": 1, "chunk_elements": 7},
    ]:
        other = name_atoms(*args, NamingConfig(**FAST, **chunks))
        pd.testing.assert_frame_equal(base.table, other.table, rtol=1e-5)
        pd.testing.assert_frame_equal(base.examples, other.examples, rtol=1e-5)
        pd.testing.assert_frame_equal(base.shuffled, other.shuffled, rtol=1e-5)
        assert np.array_equal(base.hist, other.hist)


def test_control_and_atom_table(world) -> None:
    results = naming_with_controls(
        world["store"], exact_sae(), world["instances"], NamingConfig(**FAST), tokenizer=VOCAB,
        control_store=world["random_store"], control_sae=random_sae(),
    )  # fmt: skip
    table = atom_table(results, sort_by="auc")
    assert set(table.model) == {"trained", "control"}
    cols = {"atom", "frequency", "mean_act", "label", "purity", "auc", "precision", "recall", "n_examples"}
    assert cols <= set(table.columns)
    summary = consistency_summary(results).set_index(["model", "modality", "labels"])
    assert (
        summary.loc[("trained", "all", "own"), "mean_auc"]
        > summary.loc[("control", "all", "own"), "mean_auc"]
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("d_in", f"d_in={D_IN + 1}"),
        ("types", "no tokens of types ['cot']"),
        ("atoms", "atom indices must lie in [0, 5)"),
        ("nogeom", "no image geometry"),
        ("nomasks", "image labels need instance masks"),
        ("control", "both a store"),
    ],
)
def test_bad_input_is_a_clear_error(world, case: str, message: str) -> None:
    store, sae, inst, cfg = world["store"], exact_sae(), world["instances"], dict(FAST)
    kw = {}
    if case == "d_in":
        sae = exact_sae(D_IN + 1)
    elif case == "types":
        cfg["token_types"] = ["cot"]
    elif case == "atoms":
        cfg["atoms"] = [1, 7]
    elif case == "nogeom":
        store = world["nogeom"]
    elif case == "nomasks":
        inst = None
    elif case == "control":
        kw = {"control_store": world["random_store"]}
    with pytest.raises(AnalysisInputError, match=re.escape(message)):
        naming_with_controls(store, sae, inst, NamingConfig(**cfg), **kw)


def test_atoms_command_writes_html_csv_parquet_atomically(world, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "report"
    argv = ["atoms", "--sae", str(world["sae"]), "--store", str(world["root"] / "store"), "--out", str(out),
            "--control-store", str(world["root"] / "random"), "--control-sae", str(world["random_sae"]),
            "--val-fraction", str(VAL), "--top-k", "8", "--shuffles", "2", "--cards", "3", "--tokenizer", "none",
            "--progress", "false"]  # fmt: skip
    assert main(argv) == 0  # corpus (masks and images) found through the store's data path
    printed = capsys.readouterr().out
    assert (
        f"Atom naming report: {(out / 'atoms.html').absolute()}" in printed
        and "The labels of 3 image atoms predict where they fire on held-out documents better than" in printed
    )
    page = (out / "atoms.html").read_text()
    assert page.count("plotly.js v") <= 1 and '<img src="data:image/png;base64,' in page and "Atom 0" in page
    for name in ("table", "examples", "consistency", "shuffled", "inputs"):
        assert (out / "atoms" / f"atoms_{name}.csv").exists()
        assert len(pd.read_parquet(out / "atoms" / f"atoms_{name}.parquet")) > 0
    table = pd.read_parquet(out / "atoms" / "atoms_table.parquet")
    assert (
        set(table.model) == {"trained", "control"}
        and table.set_index(["model", "atom"]).loc[("trained", 0), "auc"] == 1
    )
    assert not list(out.glob(".*tmp*"))

    import analysis.report.html as report

    def broken(df, stem, formats=("csv", "parquet")):
        raise OSError("disk full")

    monkeypatch.setattr(report, "write_table", broken)
    assert main([*argv, "--cards", "1"]) == 2  # one sentence on stderr (the CLI's error path)
    assert "disk full" in capsys.readouterr().err
    assert (out / "atoms.html").read_text() == page and not list(out.glob(".*tmp*"))


def test_cards_degrade_without_images(world, tmp_path: Path) -> None:
    corpus = write_world(tmp_path / "noimages", N_DOCS, images=False)
    out = tmp_path / "o"
    argv = ["atoms", "--sae", str(world["sae"]), "--store", str(world["root"] / "store"), "--out", str(out),
            "--corpus", str(corpus), "--val-fraction", str(VAL), "--card-atoms", "0", "2", "--tokenizer", "none",
            "--shuffles", "0", "--progress", "false"]  # fmt: skip
    assert main(argv) == 0
    page = (out / "atoms.html").read_text()
    assert "images unavailable" in page and '<img src="data:image/png' not in page


@pytest.fixture(scope="module")
def atoms_report(world, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The atoms command's report with the control and cards for atoms 0 (image) and 3 (text)."""
    out = tmp_path_factory.mktemp("atoms_report")
    argv = ["atoms", "--sae", str(world["sae"]), "--store", str(world["root"] / "store"), "--out", str(out),
            "--control-store", str(world["root"] / "random"), "--control-sae", str(world["random_sae"]),
            "--val-fraction", str(VAL), "--top-k", "8", "--shuffles", "2", "--card-atoms", "0", "3",
            "--tokenizer", "none", "--progress", "false"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_atoms_report_opens_with_the_verdict_its_tables_carry(atoms_report: Path) -> None:
    page = (atoms_report / "atoms.html").read_text()
    verdict = page_verdict(page)
    summary = pd.read_parquet(atoms_report / "atoms" / "atoms_consistency.parquet")
    s = summary.set_index(["model", "modality", "labels"])
    own = s.loc[("trained", "image", "own")]
    assert verdict.values == {
        "headline": own["mean_auc"],
        "baseline": s.loc[("trained", "image", "shuffled"), "mean_auc"],
        "control": s.loc[("control", "image", "own"), "mean_auc"],
    }
    assert own["mean_auc"] == own["auc_ci_low"] == own["auc_ci_high"] == 1.0  # the exact atoms' labels hold
    assert verdict.sentence.startswith(
        "The labels of 3 image atoms predict where they fire on held-out documents better than chance: "
        f"mean AUC 1.000 [1.000, 1.000] vs shuffled labels {s.loc[('trained', 'image', 'shuffled'), 'mean_auc']:.3f}"
    )
    control = s.loc[("control", "image", "own")]
    assert f"score {control['mean_auc']:.3f} [{control['auc_ci_low']:.3f}" in verdict.sentence
    tables = page_tables(page)
    assert verdict.start < first_figure(page) < page.index(tables[0]) and len(tables) == len(set(tables)) == 3


def test_atom_cards_are_feature_dashboards(atoms_report: Path) -> None:
    """Each card: the label with its held-out score, an activation histogram, top patches as image crops,
    top text contexts with the firing token highlighted."""
    page = (atoms_report / "atoms.html").read_text()
    table = pd.read_parquet(atoms_report / "atoms" / "atoms_table.parquet").set_index(["model", "atom"])
    examples = pd.read_parquet(atoms_report / "atoms" / "atoms_examples.parquet")
    cards = re.findall(r"<h2>Atom (\d+) — ([^<]*)</h2>(.*?)</section>", page, re.S)
    assert [(int(a), label) for a, label, _ in cards] == [(0, "red"), (3, "#10")]  # no tokenizer: ids
    for atom, _, body in cards:
        row = table.loc[("trained", int(atom))]
        assert f"held-out AUC {row['auc']:.3f} (shuffled labels {row['shuffled_auc']:.3f})" in body
        assert f"fires on {row['frequency']:.2%} of tokens" in body
        assert body.count('<div class="plot-container') == 0 and body.count('id="figure-') == 1  # histogram
        ex = examples[(examples["model"] == "trained") & (examples["atom"] == int(atom))]
        if int(atom) == 0:  # image atom: its top patches as crops, in rank order with their activations
            assert body.count('<img src="data:image/png;base64,') == min(8, len(ex)) > 0
            first = ex.sort_values("rank").iloc[0]
            assert f"<b>{first['activation']:.3g}</b><br>doc {first['doc_id']}" in body
        else:  # text atom: contexts with the example token marked
            assert body.count("<mark ") == min(10, len(ex)) > 0 and ">#10 </mark>" in body


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed (.ci/run installs it)")
def test_atoms_report_renders_in_headless_chromium(atoms_report: Path) -> None:
    assert_renders(atoms_report / "atoms.html", figures=3)  # consistency + two histograms
