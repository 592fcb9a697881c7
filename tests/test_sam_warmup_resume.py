"""The tiny SAM's build survives an interruption (it continues to the same weights) and can be committed:
a committed tiny SAM is found instead of trained, and `segcompass warmup-sam --reproduce` rebuilds it bit for
bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _faults import interrupted_on_call
from _sam_small import SMALL_SAM
from safetensors.torch import load_file

from segcompass.cli import main
from segcompass.committed import commit_stage
from segcompass.sam_warmup import SamWarmupConfig, tiny_sam
from segcompass.sam_warmup import train as sam_train
from segcompass.sam_warmup.cache import SAM_STAGE
from segcompass.stages import partial_folder

SMALL = {**SMALL_SAM, "steps": 4, "prompts_per_image": 2}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sam.safetensors"))


def test_an_interrupted_tiny_sam_build_continues_to_the_same_weights(tmp_path, monkeypatch, one_thread):
    cfg = SamWarmupConfig(**SMALL)
    clean = tiny_sam(cfg, tmp_path / "clean", progress=False)
    first_of_step_2 = 2 * (1 + cfg.refine_iters) + 1  # each step computes 1 + refine_iters mask losses
    monkeypatch.setattr(sam_train, "_mask_loss", interrupted_on_call(sam_train._mask_loss, first_of_step_2))
    with pytest.raises(KeyboardInterrupt):
        tiny_sam(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    final = SAM_STAGE.path(cfg, tmp_path / "resumed")
    assert not final.exists()
    kept = [p.name for p in (partial_folder(final) / "loops" / "checkpoints").iterdir()]
    assert kept == ["loop0-step-0000002"]
    resumed = tiny_sam(cfg, tmp_path / "resumed", progress=False)
    assert resumed.path == final and not (final / "loops").exists()
    assert resumed.train_info["losses"] == clean.train_info["losses"]
    a, b = _weights(resumed.path), _weights(clean.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_committed_tiny_sam_is_found_not_trained_and_reproduces(tmp_path, monkeypatch, capsys, one_thread):
    cfg = SamWarmupConfig(**SMALL)
    built = tiny_sam(cfg, tmp_path / "maintainer", progress=False)
    root = tmp_path / "checkpoints"
    key = built.path.name
    commit_stage(built.path, SAM_STAGE.subdir, f"segcompass warmup-sam --reproduce {key}", 1, root)
    monkeypatch.setenv("SEGCOMPASS_CHECKPOINTS", str(root))

    def no_training(*args, **kwargs):
        raise AssertionError("a committed tiny SAM must not be trained")

    with monkeypatch.context() as m:
        m.setattr(sam_train, "_mask_loss", no_training)
        found = tiny_sam(cfg, tmp_path / "user", progress=False)
    assert found.cached and found.path.parent == tmp_path / "user" / "sam"
    assert torch.equal(_weights(found.path)["mask_decoder.iou_token.weight"],
                       _weights(built.path)["mask_decoder.iou_token.weight"])  # fmt: skip

    assert main(["warmup-sam", "--reproduce", key]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["key"], report["reproduced"], report["differing"], report["threads"]) == (key, True, [], 1)
    assert report["tensors"] == len(_weights(built.path))
    assert main(["pretrain", "--reproduce", key]) == 2  # the stack's command does not rebuild a SAM
    assert "'tiny-sam' is not reproduced by this command" in capsys.readouterr().err
