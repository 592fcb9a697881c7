"""Resumable cached stages (`Stage(resumable=True)`, segcompass/stages.py): built in a `<key>.partial` work
folder that survives an interruption, continued by the next build, renamed into place once, never loaded
half-built, and built by one process at a time (the other waits or is refused)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from _faults import ROOT, kill_9, wait_until

from segcompass import stages
from segcompass.stages import (
    STAGE_FILE,
    Stage,
    StageBusy,
    StageMissing,
    build_stage,
    ensure_stage,
    partial_folder,
    stage_folder,
)

CONFIG = {"steps": 3}

# A build in steps, one file each, that continues from the steps a previous attempt left in its folder;
# every call appends what it found to `<root>/calls.log`. `interrupt_after` makes it raise after that many
# steps of this call; a `<root>/hold` file makes it stop after its first step until `<root>/go` exists.
BUILD = """
import json, time
from pathlib import Path

def build(config, folder, root, interrupt_after=None):
    found = sorted(p.name for p in folder.glob("step-*"))
    with open(root / "calls.log", "a") as log:
        log.write(json.dumps(found) + "\\n")
    done = 0
    for i in range(config["steps"]):
        step = folder / f"step-{i}"
        if step.exists():
            continue
        step.write_text(str(i))
        done += 1
        if interrupt_after is not None and done >= interrupt_after:
            raise KeyboardInterrupt("interrupted")
        if (root / "hold").exists():
            while not (root / "go").exists():
                time.sleep(0.01)
"""
_namespace: dict = {}
exec(BUILD, _namespace)  # the same build in this process and in the child processes below


def _stage(root: Path, interrupt_after: int | None = None) -> Stage[dict]:
    def build(config: dict, folder: Path) -> None:
        _namespace["build"](config, folder, root, interrupt_after)

    return Stage("demo-resume", 1, build, "segcompass demo --resume", subdir="demo", resumable=True)


def _calls(root: Path) -> list[list[str]]:
    log = root / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _child(root: Path) -> subprocess.Popen:
    """A separate process that builds the stage under `root` (flock is per process, not per thread)."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from test_stage_resumable import CONFIG, _stage
        from segcompass.stages import build_stage
        root = Path({str(root)!r})
        print(build_stage(_stage(root), CONFIG, root))
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def test_an_interrupted_resumable_stage_continues_and_publishes_once(tmp_path: Path) -> None:
    path = _stage(tmp_path).path(CONFIG, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        build_stage(_stage(tmp_path, interrupt_after=1), CONFIG, tmp_path)
    work = partial_folder(path)
    assert sorted(p.name for p in work.iterdir()) == ["step-0"] and not path.exists()
    # a half-built stage never loads; the message names the command and the build it will continue
    with pytest.raises(StageMissing, match=r"segcompass demo --resume.*continues the interrupted build"):
        stage_folder(_stage(tmp_path), CONFIG, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        build_stage(_stage(tmp_path, interrupt_after=1), CONFIG, tmp_path)
    assert sorted(p.name for p in work.iterdir()) == ["step-0", "step-1"]

    assert ensure_stage(_stage(tmp_path), CONFIG, tmp_path) == (path, False)
    # each attempt continued where the previous one stopped: no step was redone
    assert _calls(tmp_path) == [[], ["step-0"], ["step-0", "step-1"]]
    assert sorted(p.name for p in path.iterdir()) == [STAGE_FILE, "step-0", "step-1", "step-2"]
    assert json.loads((path / STAGE_FILE).read_text())["config"] == CONFIG
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no work folder, no lock left
    stamp = (path / STAGE_FILE).stat().st_mtime_ns
    assert ensure_stage(_stage(tmp_path), CONFIG, tmp_path) == (path, True)
    assert build_stage(_stage(tmp_path), CONFIG, tmp_path) == stage_folder(_stage(tmp_path), CONFIG, tmp_path)
    assert len(_calls(tmp_path)) == 3 and (path / STAGE_FILE).stat().st_mtime_ns == stamp  # published once


def test_a_build_finished_in_the_work_folder_but_not_published_is_published_by_the_next(
    tmp_path: Path,
) -> None:
    stage = _stage(tmp_path)
    path = stage.path(CONFIG, tmp_path)
    work = partial_folder(path)
    work.mkdir(parents=True)
    for i in range(3):  # a build killed after its last step, before the rename
        (work / f"step-{i}").write_text(str(i))
    with pytest.raises(StageMissing):
        stage_folder(stage, CONFIG, tmp_path)
    assert build_stage(stage, CONFIG, tmp_path) == path and stage_folder(stage, CONFIG, tmp_path) == path
    assert _calls(tmp_path) == [["step-0", "step-1", "step-2"]] and not work.exists()


def test_force_rebuilds_from_scratch_and_keeps_the_old_folder_until_the_new_one_is_complete(
    tmp_path: Path,
) -> None:
    path = build_stage(_stage(tmp_path), CONFIG, tmp_path)
    (path / "marker").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        build_stage(_stage(tmp_path, interrupt_after=1), CONFIG, tmp_path, force=True)
    assert (path / "marker").exists() and stage_folder(_stage(tmp_path), CONFIG, tmp_path) == path
    assert build_stage(_stage(tmp_path), CONFIG, tmp_path, force=True) == path
    assert not (path / "marker").exists() and _calls(tmp_path)[-1] == []  # force: not a continuation


def test_a_builder_killed_mid_build_is_taken_over_and_continued(tmp_path: Path) -> None:
    (tmp_path / "hold").write_text("")
    path = _stage(tmp_path).path(CONFIG, tmp_path)
    child = _child(tmp_path)
    try:
        assert wait_until(lambda: (partial_folder(path) / "step-0").exists(), child, 120, "first step")
        with pytest.raises(StageBusy, match=rf"demo-resume .*being built.*pid {child.pid}"):
            build_stage(_stage(tmp_path), CONFIG, tmp_path, wait=False)
    finally:
        assert kill_9(child)  # killed while it held the lock
    (tmp_path / "hold").unlink()
    assert build_stage(_stage(tmp_path), CONFIG, tmp_path, wait=False) == path
    assert _calls(tmp_path) == [[], ["step-0"]]  # the child's step was kept, not redone
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_two_builders_one_builds_the_other_waits_and_loads_its_result(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stages, "WAIT_POLL_SECONDS", 0.05)
    (tmp_path / "hold").write_text("")
    path = _stage(tmp_path).path(CONFIG, tmp_path)
    child = _child(tmp_path)
    try:
        assert wait_until(lambda: (partial_folder(path) / "step-0").exists(), child, 120, "first step")
        release = threading.Timer(0.5, lambda: (tmp_path / "go").write_text(""))
        release.start()
        assert build_stage(_stage(tmp_path), CONFIG, tmp_path) == path  # waits for the child, builds nothing
        release.join()
        assert child.wait(timeout=120) == 0 and child.stdout.read().strip() == str(path)
    finally:
        kill_9(child)
    assert _calls(tmp_path) == [[]]  # one build, by the child
    assert sorted(p.name for p in path.iterdir()) == [STAGE_FILE, "step-0", "step-1", "step-2"]
