"""Fault injection: kill -9 at random moments of capture, SAE training and joint training (three times in
a row), then resume: the result is identical to an uninterrupted run. Two runs into one folder: one refuses
with one sentence, the other's output is untouched.

Each run is a separate process SIGKILLed after a random delay (seeded) once it holds its output folder's
lock, anywhere in [0, the uninterrupted run's duration): mid-forward, mid-shard, mid-checkpoint, while the
final files are moved into place, or after it finished (then it is left alone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _corpus import write_corpus
from _faults import ROOT, holds_lock, kill_at_random_points, timed_run, wait_until
from _sae_common import cli_args, make_store, sparse_dictionary, store_rows
from _training_common import training_process, world_data
from safetensors.torch import load_file

from sae.cli import main as sae_main
from sae.store import ActivationStore

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_capture_killed_three_times_at_random_then_resumed_equals_an_uninterrupted_capture(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n=6)

    def capture(out: Path):
        return lambda: _process(["-m", "sae.cli", "capture", "--data", str(corpus), "--out", str(out), "--backbone",
                                 "tiny:llava", "--batch-size", "2", "--shard-tokens", "60", "--resume", "true"])  # fmt: skip

    window = timed_run(capture(tmp_path / "ref"), tmp_path / "ref")
    killed = tmp_path / "killed"
    assert kill_at_random_points(capture(killed), killed, window, seed=1) >= 1
    if not (killed / "manifest.json").exists():
        assert capture(killed)().wait(timeout=600) == 0
    ref, ours = ActivationStore.open(tmp_path / "ref"), ActivationStore.open(killed)
    assert ours.store_id == ref.store_id and ours.manifest.num_documents == ref.manifest.num_documents == 6
    _same_tensors(store_rows(ours), store_rows(ref))
    assert not list(killed.rglob(".*tmp*")) and not (killed / "progress").exists()


SAE_RUN = {"d_sae": 128, "l1_coefficient": 1.0, "lr": 3e-3, "batch_size": 256, "epochs": 3,
           "checkpoint_every_tokens": 256 * 20, "keep_checkpoints": 0, "num_threads": 1, "progress": False,
           "val_max_tokens": 0}  # fmt: skip


@pytest.fixture(scope="module")
def sae_reference(tmp_path_factory):
    """A store, and an uninterrupted SAE run on it in its own process: (store, output folder, its duration)."""
    root = tmp_path_factory.mktemp("sae")
    store = make_store(root / "acts", sparse_dictionary(8192, seed=5)[0])
    out = root / "ref"
    seconds = timed_run(lambda: _process(["-m", "sae.cli", "train", *cli_args(store=store.root, out=out, **SAE_RUN)]),
                        out)  # fmt: skip
    return store, out, seconds


def test_sae_training_killed_three_times_at_random_then_resumed_is_bit_identical(sae_reference, tmp_path):
    store, ref, window = sae_reference
    out = tmp_path / "killed"
    args = ["-m", "sae.cli", "train", *cli_args(store=store.root, out=out, resume=True, **SAE_RUN)]
    assert kill_at_random_points(lambda: _process(args), out, window, seed=2) >= 1
    if not (out / "segcompass_sae.json").exists():
        assert _process(args).wait(timeout=600) == 0
    _same_tensors(load_file(out / "sae_weights.safetensors"), load_file(ref / "sae_weights.safetensors"))
    assert not list(out.rglob(".*tmp*"))


def test_joint_training_killed_three_times_at_random_then_resumed_is_bit_identical(tmp_path):
    data = world_data(tmp_path / "world")
    steps = 3

    def run(out: Path):
        return lambda: training_process(data, out, steps, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    window = timed_run(run(tmp_path / "ref"), tmp_path / "ref")
    out = tmp_path / "killed"
    assert kill_at_random_points(run(out), out, window, seed=3) >= 1
    assert run(out)().wait(timeout=900) == 0  # resumes (or re-saves a finished run's final model)
    for part in ("head.safetensors", "backbone/model.safetensors"):
        _same_tensors(load_file(out / "final" / part), load_file(tmp_path / "ref" / "final" / part))
    assert not list(out.rglob(".tmp-*"))


def test_two_sae_runs_into_one_folder_one_refuses_and_the_other_is_untouched(sae_reference, tmp_path, capsys):
    """#23.2: the second run stops at once with one sentence naming the first; the first finishes with
    exactly the weights of a run that was alone."""
    store, ref, _ = sae_reference
    out = tmp_path / "shared"
    args = cli_args(store=store.root, out=out, **SAE_RUN)
    first = _process(["-m", "sae.cli", "train", *args])
    try:
        assert wait_until(lambda: holds_lock(out, first.pid), first, what="lock of the first run")
        assert sae_main(["train", *args]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by SAE training (pid {first.pid} on" in err and "another folder" in err, err
        assert len(err.strip().splitlines()) == 1
        assert sae_main(["train", *args, "--resume", "true"]) == 2  # resuming it is refused too
        assert first.wait(timeout=600) == 0, first.stderr.read().decode()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    _same_tensors(load_file(out / "sae_weights.safetensors"), load_file(ref / "sae_weights.safetensors"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
