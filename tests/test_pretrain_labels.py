"""The pretraining stages' targets on hand-computed cases, and the cached-stage abstraction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segcompass.pretrain.labels import (
    attribute_counts,
    covering_attributes,
    covering_labels,
    object_weights,
    soft_cross_entropy,
    token_composition,
)
from segcompass.pretrain.pool import cell_coverage
from segcompass.pretrain.probe import linear_probe
from segcompass.stages import Stage, StageMissing, build_stage, stage_folder


def test_cell_coverage_is_the_area_fraction_per_cell():
    mask = np.zeros((1, 4, 6), dtype=bool)  # a 4 × 6 image, 2 × 3 cells of 2 × 2 pixels
    mask[0, 0:2, 0:2] = True  # cell (0, 0) full
    mask[0, 2, 2] = True  # one pixel of cell (1, 1): 1/4
    cov = cell_coverage(mask, (2, 3))
    expected = np.array([[1.0, 0.0, 0.0], [0.0, 0.25, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(cov[0], expected, atol=1e-6)


def test_token_composition_adds_same_class_objects_and_keeps_background():
    coverage = np.array(
        [[[0.5, 0.0]], [[0.25, 1.0]], [[0.25, 0.0]]], dtype=np.float32
    )  # 3 objects, 1 × 2 cells
    classes = np.array([0, 1, 0])
    comp = token_composition(coverage, classes, num_classes=2)
    np.testing.assert_allclose(comp, [[0.75, 0.25, 0.0], [0.0, 1.0, 0.0]], atol=1e-6)
    comp2 = token_composition(coverage[:1], classes[:1], num_classes=2)
    np.testing.assert_allclose(comp2, [[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]], atol=1e-6)


def test_covering_labels_background_object_and_mixed_cells():
    coverage = np.array([[[0.6, 0.3, 0.05]], [[0.1, 0.3, 0.0]]], dtype=np.float32)  # 2 objects, 3 cells
    classes = np.array([4, 2])
    # cell 0: object 0 covers 0.6 → class 4; cell 1: 0.3 / 0.3 / background 0.4 → mixed; cell 2: background 0.95
    np.testing.assert_array_equal(covering_labels(coverage, classes), [4, -2, -1])


def test_covering_attributes_copy_the_covering_objects_row_and_ignore_the_rest():
    coverage = np.array([[[0.6, 0.3, 0.05]], [[0.1, 0.55, 0.0]]], dtype=np.float32)  # 2 objects, 3 cells
    attributes = np.array([[1, 2, 0, 5], [3, 4, 2, 7]])
    expected = [[1, 2, 0, 5], [3, 4, 2, 7], [-100] * 4]  # cell 2: no object covers half of it
    np.testing.assert_array_equal(covering_attributes(coverage, attributes), expected)
    empty = covering_attributes(np.zeros((0, 1, 2), np.float32), np.zeros((0, 4), np.int64))
    np.testing.assert_array_equal(empty, [[-100] * 4] * 2)


def test_object_weights_normalise_and_drop_barely_visible_objects():
    coverage = np.array([[[1.0, 1.0]], [[0.1, 0.0]]], dtype=np.float32)
    weights, keep = object_weights(coverage, min_cells=0.25)
    np.testing.assert_array_equal(keep, [0])
    np.testing.assert_allclose(weights, [[0.5, 0.5]])


def test_attribute_counts_per_colour_then_shape():
    attrs = np.array([[0, 3, 1, 0], [0, 4, 2, 8], [6, 3, 0, 4]])
    counts = attribute_counts(attrs)
    assert counts.tolist() == [2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 1, 0, 0]  # colours, then shapes


def test_soft_cross_entropy_equals_hard_cross_entropy_on_one_hot_targets():
    logits = torch.randn(5, 4)
    target = torch.tensor([0, 3, 1, 1, 2])
    hard = torch.nn.functional.cross_entropy(logits, target)
    soft = soft_cross_entropy(logits, torch.nn.functional.one_hot(target, 4).float())
    assert torch.allclose(hard, soft, atol=1e-6)


def test_linear_probe_separates_separable_data_and_reports_majority():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = torch.tensor(np.eye(3)[y] * 3 + rng.normal(0, 0.3, (300, 3)), dtype=torch.float32)
    res = linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert res.accuracy > 0.95
    assert res.majority == pytest.approx(np.bincount(y[200:]).max() / 100)
    noise = torch.randn(300, 3)
    assert linear_probe(noise[:200], y[:200], noise[200:], y[200:]).accuracy < 0.6


def _writer(calls: list):
    def build(config: dict, folder):
        calls.append(config)
        (folder / "value.txt").write_text(str(config["x"]))

    return build


def test_stage_builds_once_keys_on_config_and_version(tmp_path):
    calls: list = []
    stage = Stage("demo", 1, _writer(calls), command="segcompass demo")
    with pytest.raises(StageMissing, match="segcompass demo"):
        stage_folder(stage, {"x": 1}, tmp_path)
    a = build_stage(stage, {"x": 1}, tmp_path)
    assert build_stage(stage, {"x": 1}, tmp_path) == a and len(calls) == 1  # cached
    assert stage_folder(stage, {"x": 1}, tmp_path) == a
    assert json.loads((a / "stage.json").read_text())["config"] == {"x": 1}
    b = build_stage(stage, {"x": 2}, tmp_path)
    assert b != a and (b / "value.txt").read_text() == "2"
    newer = Stage("demo", 2, _writer(calls), command="segcompass demo")
    assert newer.key({"x": 1}) != stage.key({"x": 1})
    build_stage(stage, {"x": 1}, tmp_path, force=True)
    assert len(calls) == 3


def test_failed_stage_build_leaves_nothing_behind(tmp_path):
    def broken(config, folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("boom")

    stage = Stage("broken", 1, broken, command="x")
    with pytest.raises(RuntimeError, match="boom"):
        build_stage(stage, {}, tmp_path)
    assert not any(p.name.startswith("broken") for p in (tmp_path / "stages").iterdir())
    assert list((tmp_path / "stages").iterdir()) == []
