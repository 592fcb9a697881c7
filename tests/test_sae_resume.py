"""Checkpoints: kill -9 then --resume gives the uninterrupted run's weights bit for bit; refusals."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _sae_common import make_store, sparse_dictionary
from safetensors.torch import load_file

from sae.training import TrainConfig, train_sae
from sae.training.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]

RUN = {
    "d_sae": 256,
    "l1_coefficient": 1.0,
    "lr": 3e-3,
    "batch_size": 256,
    "epochs": 6,
    "checkpoint_every_tokens": 256 * 40,
    "keep_checkpoints": 0,
    "num_threads": 1,
    "progress": False,
    "val_max_tokens": 0,
}


def cli_args(**fields) -> list[str]:
    """`segcompass-sae train` flags for the given TrainConfig fields."""
    args = []
    for k, v in fields.items():
        args += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    return args


def digest_tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in path.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x, _ = sparse_dictionary(16384, seed=5)
    return make_store(tmp_path_factory.mktemp("store") / "acts", x)


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted_run_bitwise(store, tmp_path):
    """A subprocess is SIGKILLed right after its first checkpoint is complete; the resumed run ends with
    exactly the weights of a run that was never interrupted (same seed, fp32, one thread on both sides)."""
    reference = train_sae(TrainConfig(store=str(store.root), out=str(tmp_path / "ref"), **RUN))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sae.cli", "train", *cli_args(store=store.root, out=killed, **RUN)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(killed):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "segcompass_sae.json").exists(), "the run finished before it was killed"
    first = list_checkpoints(killed)[0]
    assert first.tokens < reference.tokens

    resumed = train_sae(TrainConfig(store=str(store.root), out=str(killed), resume=True, **RUN))
    assert resumed.steps == reference.steps
    ours, theirs = (
        load_file(killed / "sae_weights.safetensors"),
        load_file(reference.out / "sae_weights.safetensors"),
    )
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert not list((killed / "checkpoints").glob(".tmp-*"))


class _CrashAfter:
    """A store whose batch stream raises after `n` batches (an interrupted run that leaves checkpoints)."""

    def __init__(self, store, n: int) -> None:
        self.store, self.n = store, n

    def __getattr__(self, name):
        return getattr(self.store, name)

    def batches(self, *args, **kwargs):
        for i, batch in enumerate(self.store.batches(*args, **kwargs)):
            if i == self.n:
                raise RuntimeError("simulated crash")
            yield batch


@pytest.fixture
def unfinished(store, tmp_path):
    cfg = TrainConfig(store=str(store.root), out=str(tmp_path / "run"), **{**RUN, "epochs": 1})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(cfg, source=_CrashAfter(store, 50))
    assert list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / "segcompass_sae.json").exists()
    return cfg


def test_checkpoint_of_another_config_is_refused_and_kept(unfinished):
    out = Path(unfinished.out)
    before = digest_tree(out)
    other = TrainConfig(**{**unfinished.to_dict(), "l1_coefficient": 2.0, "resume": True})
    with pytest.raises(ValueError, match=r"another configuration \(l1_coefficient: 1.0 -> 2.0\)"):
        train_sae(other)
    assert digest_tree(out) == before


def test_unfinished_run_needs_resume_and_resume_finishes_it(unfinished):
    out = Path(unfinished.out)
    before = digest_tree(out)
    with pytest.raises(FileExistsError, match="--resume"):
        train_sae(unfinished)
    assert digest_tree(out) == before
    # Settings outside the fingerprint (logging, checkpoint cadence) may change on resume.
    again = TrainConfig(**{**unfinished.to_dict(), "resume": True, "log_every": 7})
    result = train_sae(again)
    assert (out / "segcompass_sae.json").exists() and result.steps > 0
    finished = digest_tree(out)
    with pytest.raises(FileExistsError, match="already holds a trained SAE"):
        train_sae(again)
    assert digest_tree(out) == finished
