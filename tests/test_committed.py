"""Stage folders committed with the code (`segcompass.committed`): copied into the cache on first use after
a check against the manifest, never over a changed file, and reproducible by the command the manifest names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from segcompass.cli import main
from segcompass.committed import (
    MANIFEST_FILE,
    CommittedCheckpointError,
    commit_stage,
    compare_weights,
    cpu_name,
    drop_stage,
    read_manifest,
    verify,
)
from segcompass.pretrain.config import StackConfig
from segcompass.pretrain.stack import COMMITTABLE, TEXT
from segcompass.reproduce import committed_stage_config
from segcompass.sam_warmup import cache as sam_cache
from segcompass.sam_warmup.cache import SAM_STAGE
from segcompass.sam_warmup.config import SamWarmupConfig
from segcompass.stages import Stage, StageMissing, build_stage, find_stage, stage_folder

REPO_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def _demo(built: list[int]) -> Stage[dict]:
    def build(config: dict, folder: Path) -> None:
        built.append(config["n"])
        save_file({"w": torch.full((3,), float(config["n"]))}, str(folder / "model.safetensors"))

    return Stage("demo", 1, build, "segcompass demo --n N", subdir="demo")


def _committed_demo(tmp_path: Path, monkeypatch, n: int = 3) -> tuple[Stage[dict], list[int], Path, Path]:
    """A demo stage built in one cache and committed to a checkpoints root that the env var points at."""
    built: list[int] = []
    stage = _demo(built)
    folder = build_stage(stage, {"n": n}, tmp_path / "maintainer-cache")
    root = tmp_path / "checkpoints"
    commit_stage(folder, stage.subdir, f"reproduce {folder.name}", threads=1, root=root)
    monkeypatch.setenv("SEGCOMPASS_CHECKPOINTS", str(root))
    built.clear()
    return stage, built, root, folder


def test_a_committed_stage_is_copied_into_the_cache_instead_of_built(tmp_path, monkeypatch):
    stage, built, root, _ = _committed_demo(tmp_path, monkeypatch)
    user = tmp_path / "user-cache"
    path = stage_folder(stage, {"n": 3}, user)  # loading never builds, and here it need not
    assert path.parent.parent == user and built == []
    assert load_file(str(path / "model.safetensors"))["w"].tolist() == [3.0, 3.0, 3.0]
    assert json.loads((path / "stage.json").read_text())["key"] == path.name
    assert find_stage(stage, {"n": 3}, tmp_path / "other") and build_stage(stage, {"n": 3}, user) == path
    assert built == []
    with pytest.raises(StageMissing):  # another config is not committed
        stage_folder(stage, {"n": 4}, user)
    build_stage(stage, {"n": 3}, tmp_path / "forced", force=True)  # `force` builds anyway
    assert built == [3]
    entry = read_manifest(root)[path.name]
    assert (entry.subdir, entry.threads, entry.reproduce) == ("demo", 1, f"reproduce {path.name}")
    assert set(entry.files) == {"model.safetensors", "stage.json"}
    assert entry.notes["cpu"] == cpu_name() and entry.torch == torch.__version__.split("+")[0]


def test_a_changed_committed_file_is_refused_and_the_cache_is_left_alone(tmp_path, monkeypatch):
    stage, built, root, _ = _committed_demo(tmp_path, monkeypatch)
    key = stage.key({"n": 3})
    weights = root / "demo" / key / "model.safetensors"
    save_file({"w": torch.zeros(3)}, str(weights))  # a valid file, but not the committed one
    user = tmp_path / "user-cache"
    with pytest.raises(CommittedCheckpointError, match=r"model\.safetensors does not match its sha256"):
        stage_folder(stage, {"n": 3}, user)
    assert not (user / "demo" / key).exists() and built == []
    weights.unlink()
    with pytest.raises(CommittedCheckpointError, match=r"model\.safetensors is missing"):
        stage_folder(stage, {"n": 3}, user)
    (root / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CommittedCheckpointError, match="not a valid manifest"):
        stage_folder(stage, {"n": 3}, user)


def test_no_committed_root_means_the_stage_is_missing(tmp_path, monkeypatch):
    stage, _, _, _ = _committed_demo(tmp_path, monkeypatch)
    monkeypatch.setenv("SEGCOMPASS_CHECKPOINTS", "")
    with pytest.raises(StageMissing, match="segcompass demo"):
        stage_folder(stage, {"n": 3}, tmp_path / "user-cache")


def test_a_dropped_stage_leaves_the_manifest_and_the_other_stages_as_they_were(tmp_path, monkeypatch):
    stage, _, root, _ = _committed_demo(tmp_path, monkeypatch)
    kept = build_stage(stage, {"n": 5}, tmp_path / "maintainer-cache")
    commit_stage(kept, stage.subdir, "reproduce 5", threads=1, root=root)
    dropped = stage.key({"n": 3})
    drop_stage(dropped, root)
    assert set(read_manifest(root)) == {kept.name} and not (root / "demo" / dropped).exists()
    verify(read_manifest(root)[kept.name], root)  # the other stage is intact
    user = tmp_path / "user-cache"
    assert stage_folder(stage, {"n": 5}, user).name == kept.name
    with pytest.raises(StageMissing):  # no longer committed: it would have to be built
        stage_folder(stage, {"n": 3}, user)
    with pytest.raises(CommittedCheckpointError, match="nothing to drop"):
        drop_stage(dropped, root)


def test_compare_weights_finds_the_tensor_that_differs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    save_file({"x": torch.ones(2), "y": torch.zeros(2)}, str(a / "model.safetensors"))
    save_file({"x": torch.ones(2), "y": torch.tensor([0.0, 0.25])}, str(b / "model.safetensors"))
    result = compare_weights(a, b)
    assert (result.identical, result.tensors, result.differing, result.max_abs_diff) == (
        False,
        2,
        ("model.safetensors:y",),
        0.25,
    )
    assert compare_weights(a, a).identical
    save_file({"x": torch.ones(2)}, str(b / "model.safetensors"))  # a tensor missing on one side
    assert compare_weights(a, b).max_abs_diff == float("inf")


@pytest.fixture
def keep_threads():
    """The reproduce command sets torch's thread count to the manifest's; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_reproduce_command_rebuilds_a_committed_stage_bit_for_bit(
    tmp_path, monkeypatch, capsys, keep_threads
):
    from test_pretrain_stack import toy

    config = toy(seed=3).text_stage()
    folder = build_stage(TEXT, config, tmp_path / "maintainer-cache")
    root = tmp_path / "checkpoints"
    commit_stage(folder, TEXT.subdir, f"segcompass pretrain --reproduce {folder.name}", 1, root)
    monkeypatch.setenv("SEGCOMPASS_CHECKPOINTS", str(root))
    assert main(["pretrain", "--reproduce", folder.name]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["key"], report["reproduced"], report["differing"], report["threads"]) == (
        folder.name,
        True,
        [],
        1,
    )
    assert report["tensors"] == len(load_file(str(folder / "model.safetensors")))
    assert report["built_on"] == report["cpu"] == cpu_name()

    # A committed copy that the build does not give (one weight nudged, the manifest updated to match it):
    # the command says which tensor differs and exits with 1.
    tampered = tmp_path / "tampered" / folder.name
    shutil.copytree(folder, tampered)
    weights = load_file(str(tampered / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(tampered / "model.safetensors"))
    commit_stage(tampered, TEXT.subdir, "…", 1, root)
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--reproduce", folder.name])
    assert exit_info.value.code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["reproduced"] is False and report["differing"] == [f"model.safetensors:{name}"]
    assert report["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)


def test_reproducing_a_key_that_is_not_committed_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGCOMPASS_CHECKPOINTS", str(tmp_path))
    assert main(["pretrain", "--reproduce", "vlm-text-0000000000000000"]) == 2
    assert "'vlm-text-0000000000000000' is not a committed stage" in capsys.readouterr().err


def test_the_repositorys_committed_stages_are_intact_and_are_the_defaults():
    """Every committed folder matches its manifest, its stage.json gives its key under this code's stage
    version (else it was built by other code), and it is a stage `segcompass pretrain` (or, for the tiny SAM,
    `segcompass warmup-sam`) builds by default, with the command that reproduces it."""
    entries = read_manifest(REPO_CHECKPOINTS)
    if not entries:
        pytest.skip("no committed stages in checkpoints/")
    config = StackConfig()
    stages = {**COMMITTABLE, **sam_cache.COMMITTABLE}
    stack = {
        "vlm-text": config.text_stage(),
        "vlm-reason": config.reasoning_stage(),
        "vlm-vision": config.vision_stage(),
        "vlm-vision-final": config.vision_final_stage(),
        "vlm-align": config.align_stage(),
        "vlm-instruct": config.instruct_stage(),
    }
    defaults = {stages[name][0].key(c): (name, "pretrain") for name, c in stack.items()}
    defaults[SAM_STAGE.key(SamWarmupConfig())] = (SAM_STAGE.name, "warmup-sam")
    for key, entry in entries.items():
        verify(entry, REPO_CHECKPOINTS)
        stage, _, _ = committed_stage_config(key, stages, REPO_CHECKPOINTS)
        name, command = defaults.get(key, (None, None))
        assert name == stage.name, f"{key} is not a stage the defaults build"
        assert entry.reproduce == f"segcompass {command} --reproduce {key}"
