"""Checkpoints: kill -9 then --resume gives the uninterrupted run's weights bit for bit; refusals."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _faults import kill_9, wait_until
from _sae_common import cli_args, make_store, sparse_dictionary
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
    seen = wait_until(lambda: bool(list_checkpoints(killed)), proc, 120, "checkpoint")
    assert kill_9(proc) and seen, proc.stderr.read().decode()[-2000:]
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


def test_resume_on_a_store_of_other_weights_is_refused(tmp_path):
    """#23.1: stores captured with two seeds have two ids, so a run begun on one is not resumed on the
    other (the same corpus, backbone spec and layer)."""
    from _corpus import write_corpus

    from sae.capture import CaptureConfig, run_capture
    from sae.store import ActivationStore

    corpus = write_corpus(tmp_path / "corpus", n=6)
    stores = []
    for seed in (0, 1):
        out = tmp_path / f"acts{seed}"
        run_capture(CaptureConfig(data=str(corpus), out=str(out), backbone="tiny:llava", seed=seed))
        stores.append(ActivationStore.open(out))
    run = {"d_sae": 64, "lr": 1e-3, "batch_size": 32, "epochs": 2, "checkpoint_every_tokens": 64,
           "keep_checkpoints": 0, "progress": False, "val_max_tokens": 0}  # fmt: skip
    cfg = TrainConfig(store=str(stores[0].root), out=str(tmp_path / "run"), **run)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(cfg, source=_CrashAfter(stores[0], 5))
    assert list_checkpoints(tmp_path / "run")
    other = TrainConfig(**{**cfg.to_dict(), "store": str(stores[1].root), "resume": True})
    with pytest.raises(ValueError, match=rf"another configuration \(store_id: '{stores[0].store_id}' -> "):
        train_sae(other)
    assert stores[0].store_id != stores[1].store_id
