"""Sparsity by token type and bootstrap intervals on constructed inputs (analysis/sparsity/core.py, stats.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _analysis_common import CELL, GEOMETRY, N_TEXT, exact_sae, make_store, random_sae, write_corpus

from analysis.common.activity import DocumentMeta
from analysis.common.inputs import AnalysisInputError
from analysis.common.instances import Instance, InstanceIndex
from analysis.common.stats import bootstrap_mean_ci, bootstrap_ratio_ci
from analysis.sparsity.core import (
    GROUPS,
    SparsityConfig,
    box_statistics,
    image_token_groups,
    sparsity_by_token_type,
    sparsity_figure,
    sparsity_with_controls,
)
from sae.token_types import TokenType
from segcompass.world.masks import encode_rle

N_DOCS = 10


@pytest.fixture(scope="module")
def store_and_index(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sp")
    return make_store(root / "store", N_DOCS), InstanceIndex.from_corpus(
        write_corpus(root / "corpus", N_DOCS)
    )


def test_sparsity_equals_hand_counts(store_and_index) -> None:
    store, index = store_and_index
    result = sparsity_by_token_type(store, exact_sae(), index, SparsityConfig(progress=False, bootstrap=200))
    s = result.summary.set_index("group")
    # per document: 5 instance tokens (4 referred + 1 distractor, atoms 0 / 4, value 1), 11 background
    # tokens (no atom), and text tokens with atoms 2 (value 1) and 3 (value 2)
    expected = {
        "image_instance": (5, 1.0, 1.0, 2),
        "image_background": (11, 0.0, 0.0, 0),
        "special": (N_TEXT[TokenType.SPECIAL], 2.0, 3.0, 2),
        "instruction": (N_TEXT[TokenType.INSTRUCTION], 2.0, 3.0, 2),
        "cot": (N_TEXT[TokenType.COT], 2.0, 3.0, 2),
        "concentration": (N_TEXT[TokenType.CONCENTRATION], 2.0, 3.0, 2),
    }
    assert set(s.index) == set(expected)
    for group, (per_doc, l0, mass, distinct) in expected.items():
        row = s.loc[group]
        assert row["tokens"] == per_doc * N_DOCS and row["documents"] == N_DOCS
        assert row["mean_l0"] == pytest.approx(l0) and row["mean_mass"] == pytest.approx(mass)
        assert row["l0_ci_low"] == pytest.approx(l0) and row["l0_ci_high"] == pytest.approx(l0)
        assert row["distinct_atoms"] == distinct
    assert s.loc["image_background", "zero_l0_fraction"] == 1.0
    assert (
        result.samples.groupby("group").size().reindex(s.index) == s["tokens"]
    ).all()  # under max_samples: every token
    # without masks the image tokens are one group
    plain = sparsity_by_token_type(store, exact_sae(), None, SparsityConfig(progress=False, bootstrap=0))
    img = plain.summary.set_index("group").loc["image"]
    assert img["tokens"] == 16 * N_DOCS and img["mean_l0"] == pytest.approx(5 / 16)


def test_reservoir_bounds_samples_and_controls(store_and_index, tmp_path: Path) -> None:
    store, index = store_and_index
    control = make_store(tmp_path / "control", N_DOCS, random_acts=True)
    cfg = SparsityConfig(progress=False, bootstrap=100, max_samples=7)
    result = sparsity_with_controls(
        store, exact_sae(), index, cfg, control_store=control, control_sae=random_sae()
    )
    assert set(result.summary.model) == {"trained", "control"}
    assert result.samples.groupby(["model", "group"]).size().max() == 7
    control_rows = result.summary[result.summary.model == "control"]
    assert (control_rows["l0_ci_low"] <= control_rows["mean_l0"]).all()
    assert (control_rows["mean_l0"] <= control_rows["l0_ci_high"]).all()
    fig = sparsity_figure(result)
    assert {t.name for t in fig.data} >= {"trained", "control"}
    boxes = [t for t in fig.data if t.type == "box"]
    assert boxes and all(t.y is None for t in boxes)  # statistics, not every sampled token


def test_box_statistics_are_the_quartiles_and_tukey_whiskers() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 100.0]  # q1 2, median 3, q3 4: 100 lies beyond 4 + 1.5 × 2
    samples = pd.DataFrame({"group": ["a"] * 5 + ["b"] * 2, "l0": [*values, 7.0, 9.0]})
    box = box_statistics(samples, "l0", ["b", "a", "missing"])
    assert list(box.index) == ["b", "a"]
    assert box.loc["a"].to_dict() == {
        "q1": 2.0,
        "median": 3.0,
        "q3": 4.0,
        "lowerfence": 1.0,
        "upperfence": 4.0,
    }
    assert box.loc["b"].to_dict() == {
        "q1": 7.5,
        "median": 8.0,
        "q3": 8.5,
        "lowerfence": 7.0,
        "upperfence": 9.0,
    }


def test_image_token_groups_by_fraction_of_cell() -> None:
    mask = np.zeros(GEOMETRY.original_size, dtype=bool)
    mask[:CELL, : CELL // 2] = True  # half of cell (0, 0)
    mask[CELL : CELL + CELL // 4, CELL : 2 * CELL] = True  # a quarter of cell (1, 1)
    index = InstanceIndex({"d": [Instance(0, encode_rle(mask), int(mask.sum()))]}, "hand")
    rc = np.array([[0, 0], [1, 1], [3, 3]])
    meta = DocumentMeta(0, "d", "", GEOMETRY)
    groups = [GROUPS[g] for g in image_token_groups(meta, rc, index, 0.5)]
    assert groups == ["image_instance", "image_mixed", "image_background"]
    unknown = DocumentMeta(1, "other", "", GEOMETRY)
    assert [GROUPS[g] for g in image_token_groups(unknown, rc, index, 0.5)] == ["image"] * 3


def test_bootstrap_ci_contains_the_true_mean() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    for rep in range(40):
        values = rng.normal(5.0, 2.0, 200)
        ci = bootstrap_mean_ci(values, n_boot=300, seed=rep)
        assert ci.low < ci.estimate < ci.high and ci.estimate == pytest.approx(values.mean())
        hits += ci.low <= 5.0 <= ci.high
    assert hits >= 34  # nominal 95 %: 38 of 40 expected
    # cluster bootstrap of a ratio: documents of different lengths, true per-token mean 3
    counts = rng.integers(1, 20, 300).astype(float)
    sums = np.array([rng.normal(3.0, 1.0, int(n)).sum() for n in counts])
    ci = bootstrap_ratio_ci(sums, counts, n_boot=500, seed=0)
    assert ci.low <= 3.0 <= ci.high and ci.high - ci.low < 0.2
    same = bootstrap_ratio_ci(sums, counts, n_boot=500, seed=0)
    assert same == ci  # seeded
    with pytest.raises(ValueError):
        bootstrap_ratio_ci(np.ones(3), np.ones(4))


def test_sparsity_bad_input(store_and_index) -> None:
    store, index = store_and_index
    from sae_lens import StandardSAE, StandardSAEConfig

    with pytest.raises(AnalysisInputError, match="d_in"):
        sparsity_by_token_type(store, StandardSAE(StandardSAEConfig(d_in=3, d_sae=2)), index)
    with pytest.raises(AnalysisInputError, match="max_documents"):
        sparsity_by_token_type(store, exact_sae(), index, SparsityConfig(max_documents=0, progress=False))
