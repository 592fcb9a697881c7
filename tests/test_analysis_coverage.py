"""Instance coverage on constructed stores with known answers (analysis/coverage/core.py, instances.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _analysis_common import (
    GEOMETRY,
    SIZE,
    cell_mask,
    exact_sae,
    instances_for,
    make_store,
    random_sae,
    write_corpus,
)

from analysis.common.inputs import AnalysisInputError
from analysis.common.instances import Instance, InstanceIndex
from analysis.coverage.core import CoverageConfig, coverage_with_controls, instance_coverage
from analysis.coverage.plot import coverage_figure
from segcompass.world.masks import encode_rle

N_DOCS = 12


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cov")
    return make_store(root / "store", N_DOCS), InstanceIndex.from_corpus(
        write_corpus(root / "corpus", N_DOCS)
    )


def _curve(result, ranking: str, group: str, model: str = "trained"):
    c = result.curves
    return c[(c.model == model) & (c.ranking == ranking) & (c.group == group)].set_index("k")


def test_atoms_on_the_instance_cover_it_at_its_share_of_tokens(exact) -> None:
    store, index = exact
    cfg = CoverageConfig(atoms=[0], k_grid=[6.25, 12.5, 25.0, 31.25, 50.0, 100.0], progress=False)
    result = instance_coverage(store, exact_sae(), index, cfg)
    referred = _curve(result, "atoms", "referred")
    # the referred instance is 4 of 16 tokens: at 25 % its pixels are covered exactly once ...
    assert referred.loc[25.0, "coverage"] == pytest.approx(1.0)
    assert referred.loc[25.0, "pixel_coverage"] == pytest.approx(1.0)
    # ... and below its share, coverage is the budget over its tokens (1/4, 2/4)
    assert referred.loc[6.25, "coverage"] == pytest.approx(0.25)
    assert referred.loc[12.5, "coverage"] == pytest.approx(0.5)
    # instance + distractor tokens (5 of 16) are the only active ones under L0: all covered at 31.25 %
    assert _curve(result, "l0", "instances").loc[31.25, "coverage"] == pytest.approx(1.0)
    background = _curve(result, "l0", "background")
    assert background.loc[31.25, "coverage"] == pytest.approx(0.0)
    assert background.loc[100.0, "coverage"] == pytest.approx(1.0)
    # the baseline's expectation is the budget share; the seeds' mean is near it
    rand = _curve(result, "random", "instances")
    assert np.allclose(rand["expected_random"], rand.index / 100)
    assert (rand["coverage_std"] > 0).any() and rand.loc[100.0, "coverage"] == pytest.approx(1.0)
    auc = result.auc.set_index(["ranking", "group"])
    assert auc.loc[("atoms", "referred"), "auc"] > auc.loc[("atoms", "distractor"), "auc"]
    assert auc.loc[("l0", "instances"), "auc_gain"] > 0.3
    assert set(result.auc.group) >= {"size:large", "size:small", "referred", "distractor", "background"}
    assert result.inputs.loc[0, "documents_used"] == N_DOCS


def test_random_sae_matches_the_random_baseline(tmp_path: Path) -> None:
    n = 150
    store = make_store(tmp_path / "store", n, random_acts=True, shard_tokens=2048)
    index = InstanceIndex.from_corpus(write_corpus(tmp_path / "corpus", n))
    result = instance_coverage(store, random_sae(), index, CoverageConfig(progress=False, seeds=3))
    auc = result.auc.set_index(["ranking", "group"])
    for ranking in ("l0", "mass"):
        assert auc.loc[(ranking, "instances"), "auc"] == pytest.approx(
            auc.loc[("random", "instances"), "auc"], abs=0.04
        )
    ours = _curve(result, "l0", "instances")["coverage"]
    assert np.abs(ours.values - ours.index.values / 100).max() < 0.08


def test_controls_side_by_side_and_figure(exact, tmp_path: Path) -> None:
    store, index = exact
    control = make_store(tmp_path / "control", N_DOCS, random_acts=True)
    cfg = CoverageConfig(progress=False, seeds=2, k_grid=[10.0, 50.0, 100.0])
    result = coverage_with_controls(
        store, exact_sae(), index, cfg, control_store=control, control_sae=random_sae()
    )
    assert set(result.curves.model) == {"trained", "control"}
    assert set(result.auc.ranking) == {"l0", "mass", "random"}
    fig = coverage_figure(result)
    names = {t.name for t in fig.data if t.name}
    assert {"trained · l0", "control · l0", "trained · random", "control · random"} <= names
    with pytest.raises(AnalysisInputError, match="both"):
        coverage_with_controls(store, exact_sae(), index, cfg, control_store=control)


def test_max_documents_and_streaming_over_shards(exact) -> None:
    store, index = exact
    assert len(store.manifest.shards) > 3  # documents stream shard by shard
    result = instance_coverage(store, exact_sae(), index, CoverageConfig(progress=False, max_documents=5))
    assert result.inputs.loc[0, "documents_used"] == 5


def test_bad_input_errors(exact, tmp_path: Path) -> None:
    store, index = exact
    cfg = CoverageConfig(progress=False)
    with pytest.raises(AnalysisInputError, match="d_in"):
        from sae_lens import StandardSAE, StandardSAEConfig

        instance_coverage(store, StandardSAE(StandardSAEConfig(d_in=5, d_sae=3)), index, cfg)
    no_geom = make_store(tmp_path / "nogeom", 3, geometry=False)
    with pytest.raises(AnalysisInputError, match="image geometry"):
        instance_coverage(no_geom, exact_sae(), index, cfg)
    empty = InstanceIndex({}, "nothing")
    with pytest.raises(AnalysisInputError, match="no document"):
        instance_coverage(store, exact_sae(), empty, cfg)
    with pytest.raises(AnalysisInputError, match="atoms"):
        instance_coverage(store, exact_sae(), index, CoverageConfig(rank_by=["atoms"], progress=False))
    with pytest.raises(AnalysisInputError, match="atom indices"):
        instance_coverage(store, exact_sae(), index, CoverageConfig(atoms=[99], progress=False))
    with pytest.raises(AnalysisInputError, match="k_grid"):
        instance_coverage(store, exact_sae(), index, CoverageConfig(k_grid=[0.0, 50.0], progress=False))
    small = {"doc-0": [Instance(0, encode_rle(np.ones((8, 8), bool)), 64)]}
    with pytest.raises(AnalysisInputError, match="mask is"):
        instance_coverage(store, exact_sae(), InstanceIndex(small, "small"), cfg)


def test_coco_instances_by_file_name(tmp_path: Path) -> None:
    mask = cell_mask([(0, 0), (0, 1)])
    coco = {
        "images": [{"id": 7, "file_name": "doc-0.jpg", "height": SIZE[0], "width": SIZE[1]}],
        "annotations": [
            {"id": 3, "image_id": 7, "category_id": 1, "segmentation": encode_rle(mask), "iscrowd": 0},
            {
                "id": 4,
                "image_id": 7,
                "category_id": 1,
                "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]],
                "iscrowd": 0,
            },
            {"id": 5, "image_id": 7, "category_id": 1, "segmentation": encode_rle(mask), "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "square"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    by_stem = InstanceIndex.from_coco(path)
    insts = by_stem.get("doc-0")
    assert [i.id for i in insts] == [3, 4] and insts[0].shape == "square"
    assert np.array_equal(insts[0].mask(), mask) and insts[0].area == int(mask.sum())
    assert insts[1].mask().shape == SIZE and insts[1].size_bucket == "small"
    (tmp_path / "map.json").write_text(json.dumps({"abc": "doc-0.jpg"}))
    mapped = InstanceIndex.from_coco(path, tmp_path / "map.json", targets={"abc": [4]})
    assert [i.target for i in mapped.get("abc")] == [False, True] and mapped.get("doc-0") is None
    with pytest.raises(ValueError, match="not in"):
        InstanceIndex.from_coco(path, {"abc": "missing.jpg"})


def test_corpus_index_reads_world_records(tmp_path: Path) -> None:
    index = InstanceIndex.from_corpus(write_corpus(tmp_path, 3), keep=["doc-1"])
    assert len(index) == 1 and "doc-1" in index
    insts = index.get("doc-1")
    assert [i.target for i in insts] == [True, False] and insts[0].size == GEOMETRY.original_size
    assert insts[0].area == instances_for(1)[0]["area"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "corpus.jsonl").write_text(json.dumps({"id": "a", "text": "t"}) + "\n")
    with pytest.raises(ValueError, match="instances"):
        InstanceIndex.from_corpus(tmp_path / "old")


def test_world_corpus_masks_line_up_with_image_geometry(tmp_path: Path) -> None:
    """The synthetic world's corpus → a store whose image tokens see the true instance fraction of their cell
    (an oracle state) → the instance-fraction atom ranks instance tokens first."""
    import torch

    from sae.image_geometry import ImageGeometry
    from sae.store import CapturedDocument, StoreMetadata, StoreWriter, finalize_store
    from sae.token_types import TokenType
    from segcompass.world import WorldConfig, write_image_text_corpus

    corpus = write_image_text_corpus(tmp_path / "corpus", WorldConfig(), {"val": 4}).parent
    rows = [json.loads(line) for line in (corpus / "corpus.jsonl").read_text().splitlines()]
    meta = StoreMetadata(backbone="tiny:test", family="test", hook_layer=2, d_in=8, dtype="float32")
    writer = StoreWriter(tmp_path / "store", meta, shard_tokens=64)
    for d, row in enumerate(rows):
        h, w = row["height"], row["width"]
        geom = ImageGeometry((h, w), (h, w), (0, 0), (h // 16, w // 16), 16)
        index = InstanceIndex.from_corpus(corpus).get(row["id"])
        union = np.any([i.mask() for i in index], axis=0)
        imap = geom.token_index_map()
        frac = np.bincount(imap[(imap >= 0) & union], minlength=geom.num_tokens) / np.maximum(
            np.bincount(imap[imap >= 0], minlength=geom.num_tokens), 1
        )
        n = geom.num_tokens
        x = torch.zeros(n, 8)
        x[:, 0] = torch.from_numpy(frac).float()
        rc = torch.stack(
            torch.meshgrid(torch.arange(geom.grid[0]), torch.arange(geom.grid[1]), indexing="ij"), -1
        )
        writer.add(
            CapturedDocument(
                doc_id=d, source_id=row["id"], text=row["text"], activations=x,
                token_ids=torch.zeros(n, dtype=torch.int32),
                token_types=torch.full((n,), int(TokenType.IMAGE), dtype=torch.int8),
                image_rc=rc.reshape(-1, 2).to(torch.int16), geometry=geom,
            )
        )  # fmt: skip
    writer.close()
    finalize_store(tmp_path / "store", meta)
    result = instance_coverage(
        tmp_path / "store",
        exact_sae(),
        InstanceIndex.from_corpus(corpus),
        CoverageConfig(progress=False, atoms=[0]),
    )
    auc = result.auc.set_index(["ranking", "group"])["auc"]
    assert auc[("atoms", "instances")] > auc[("random", "instances")] + 0.15
    assert auc[("atoms", "background")] < auc[("random", "background")]
    assert result.inputs.loc[0, "documents_used"] == 4
