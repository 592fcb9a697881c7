"""`segcompass.stages.find_stage` / `ensure_stage`: what the warm-ups use to look up (previous layouts
included) and to build what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from segcompass.stages import Stage, StageMissing, ensure_stage, find_stage


def _stage(built: list[int]) -> Stage[dict]:
    def build(config: dict, folder: Path) -> None:
        built.append(config["n"])
        (folder / "value.txt").write_text(str(config["n"]))

    return Stage("demo", 1, build, "segcompass demo --n N", subdir="demo")


def test_ensure_stage_builds_once_and_find_stage_never_builds(tmp_path: Path) -> None:
    built: list[int] = []
    stage = _stage(built)
    with pytest.raises(StageMissing, match="segcompass demo --n 3"):
        find_stage(stage, {"n": 3}, tmp_path, missing="build it with `segcompass demo --n 3`")
    path, cached = ensure_stage(stage, {"n": 3}, tmp_path)
    assert (not cached, built, (path / "value.txt").read_text()) == (True, [3], "3")
    assert ensure_stage(stage, {"n": 3}, tmp_path) == (path, True) and built == [3]
    assert find_stage(stage, {"n": 3}, tmp_path) == path
    assert ensure_stage(stage, {"n": 3}, tmp_path, force=True) == (path, False) and built == [3, 3]


def test_find_stage_takes_a_complete_folder_of_a_previous_layout(tmp_path: Path) -> None:
    stage = _stage([])
    old, half = tmp_path / "old-layout", tmp_path / "half"
    old.mkdir()
    half.mkdir()
    (old / "done").write_text("")

    def complete(p: Path) -> bool:
        return (p / "done").exists()

    assert find_stage(stage, {"n": 1}, tmp_path, legacy=[half, old], legacy_complete=complete) == old
    with pytest.raises(StageMissing, match="segcompass demo --n N"):
        find_stage(stage, {"n": 1}, tmp_path, legacy=[half], legacy_complete=complete)
