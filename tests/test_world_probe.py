"""Pixel-contrast baseline: the plain world is solved by pixels, the default world is not."""

from __future__ import annotations

import pytest

from segcompass.world import WorldConfig, generate_sample
from segcompass.world.contrast_probe import cell_data, main, run_contrast_probe


def test_cell_data_shapes_for_both_token_grids() -> None:
    s = generate_sample(WorldConfig(), "train", 0)
    for cell, grid in ((28, 4), (14, 8)):
        data = cell_data(s, size=112, cell=cell)
        assert data.features.shape == (grid * grid, cell * cell * 3 + 6)
        assert data.instance.shape == data.referred.shape == (grid * grid,)
        assert ((data.referred >= 0) <= data.instance).all()  # only instance cells carry a referred label


def test_probe_separates_plain_from_default_world() -> None:
    table = run_contrast_probe(WorldConfig(), n_train=80, n_test=30, l2=1e-2)
    assert set(table["world"]) == {"default", "plain"}
    assert set(table["probe"]) == {"instance_vs_background", "referred_vs_distractor"}
    acc = table.set_index(["world", "probe"])["probe_acc"]
    majority = table.set_index(["world", "probe"])["majority_acc"]
    assert acc["plain", "instance_vs_background"] >= 0.85
    assert acc["plain", "instance_vs_background"] >= acc["default", "instance_vs_background"] + 0.1
    # pixels cannot know the instruction: no real gain over the majority class
    assert acc["default", "referred_vs_distractor"] <= majority["default", "referred_vs_distractor"] + 0.1


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--n-train" in capsys.readouterr().out
