"""Reliability: file modes follow the umask, one lock per output folder (refusal, stale takeover),
library write failures named as the file they were writing."""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from _corpus import write_corpus
from _faults import LOCK_FILE, lock_held_elsewhere
from safetensors.torch import save_file

from analysis.report.html import Section, write_report
from sae.capture import CaptureConfig, run_capture
from sae.cli import main as sae_main
from sae.files import FolderLock, FolderLockedError, WriteError, atomic_write
from sae.training import TrainConfig, train_sae

SAE_RUN = {"preset": "tiny", "d_sae": 32, "lr": 1e-3, "batch_size": 32, "epochs": 1, "checkpoint_every_tokens": 32,
           "keep_checkpoints": 1, "progress": False, "val_max_tokens": 0}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=2)


def test_store_sae_and_report_files_follow_the_umask(corpus, tmp_path: Path) -> None:
    """#23.5: shards and sae_weights.safetensors were 0600 whatever the umask (safetensors creates them so);
    every file written now has the mode a plain open() gives."""
    previous = os.umask(0o002)
    try:
        run_capture(CaptureConfig(data=str(corpus), out=str(tmp_path / "acts"), backbone="tiny:llava"))
        train_sae(TrainConfig(store=str(tmp_path / "acts"), out=str(tmp_path / "sae"), **SAE_RUN))
        write_report(tmp_path / "rep", "r", "t", [Section("s", "text")], {"t": pd.DataFrame({"a": [1]})})
    finally:
        os.umask(previous)
    files = [p for d in ("acts", "sae", "rep") for p in (tmp_path / d).rglob("*") if not p.is_symlink()]
    names = {p.name for p in files}
    assert {"manifest.json", "sae_weights.safetensors", "segcompass_sae.json", "cfg.json"} <= names
    assert any(p.parent.name == "shards" for p in files) and "r.html" in names
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == (0o775 if p.is_dir() else 0o664), p


def test_every_writer_refuses_a_folder_another_run_holds(corpus, tmp_path: Path, capsys) -> None:
    """#23.2: capture, SAE training, joint training and reports take the output folder's lock; a second run
    into it stops with one sentence naming the holder and changes nothing there."""
    out = tmp_path / "busy"
    with lock_held_elsewhere(out) as holder:
        before = sorted(p.name for p in out.iterdir())
        assert (
            sae_main(["capture", "--data", str(corpus), "--out", str(out), "--backbone", "tiny:llava"]) == 2
        )
        err = capsys.readouterr().err
        assert f"{out} is in use by a test holder (pid {holder.pid} on " in err and "another folder" in err, (
            err
        )
        assert len(err.strip().splitlines()) == 1
        from _sae_common import make_store, sparse_dictionary

        store = make_store(tmp_path / "store", sparse_dictionary(1024)[0])
        assert sae_main(["train", "--store", str(store.root), "--out", str(out), "--batch-size", "64"]) == 2
        assert f"is in use by a test holder (pid {holder.pid}" in capsys.readouterr().err
        with pytest.raises(FolderLockedError, match="in use by a test holder"):
            write_report(out, "r", "t", [Section("s", "text")])
        from _training_common import tiny_model, tiny_train_config, world_data

        from segcompass.evaluation.datasets import open_dataset
        from segcompass.training import train_joint

        data = world_data(tmp_path / "world", n_train=2, n_val=1)
        with pytest.raises(FolderLockedError, match="in use by a test holder"):
            train_joint(tiny_train_config(out), tiny_model(), open_dataset("grefcoco", data, "train"))
        assert sorted(p.name for p in out.iterdir()) == before == [LOCK_FILE]


def test_the_lock_of_a_killed_run_is_taken_over_and_released(tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    with lock_held_elsewhere(out) as holder:
        pass  # SIGKILLed at the end of the block: its lock file stays behind, its lock does not
    assert (out / LOCK_FILE).exists()
    with caplog.at_level(logging.WARNING), FolderLock(out, "resumed run"):
        with FolderLock(out, "same process"):  # re-entrant within a process
            pass
        assert (out / LOCK_FILE).exists()
    assert f"taking over the lock left by a test holder (pid {holder.pid} on" in caplog.text
    assert not (out / LOCK_FILE).exists()  # a run that ends normally leaves no lock file


def test_a_refused_run_leaves_no_folder_behind(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with pytest.raises(ValueError), FolderLock(out, "run"):
        raise ValueError("bad input")
    assert not out.exists()


def _write_past_a_small_file_limit(library: str, target: str, results) -> None:
    """In a child process only: writes past 20 kB fail as on a full disk (RLIMIT_FSIZE; EFBIG instead of
    ENOSPC). The limit must not touch the test runner's own output, which may be a file larger than that."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    big = {"x": torch.zeros(100_000)}
    write = (lambda p: torch.save(big, p)) if library == "torch" else (lambda p: save_file(big, str(p)))
    try:
        atomic_write(target, write)
        results.put(("no error", None, None))
    except WriteError as err:
        results.put(("WriteError", err.filename, err.errno))
    except BaseException as err:  # reported to the parent, which fails the test
        results.put((type(err).__name__, str(err), None))


@pytest.mark.parametrize("library", ["torch", "safetensors"])
def test_library_write_failures_name_the_file(tmp_path: Path, library) -> None:
    """torch raises RuntimeError("... unexpected pos ...") and safetensors a SafetensorError on a failed
    write; both become a WriteError naming the target, and no temporary file stays."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    target = tmp_path / "big.bin"
    child = context.Process(target=_write_past_a_small_file_limit, args=(library, str(target), results))
    child.start()
    kind, filename, code = results.get(timeout=120)
    child.join(timeout=60)
    assert kind == "WriteError", (kind, filename)
    assert filename == str(target) and code in (errno.EFBIG, errno.ENOSPC, errno.EIO)
    assert list(tmp_path.iterdir()) == []


def test_known_failures_are_one_sentence_and_bugs_keep_their_traceback() -> None:
    from sae.cli_errors import describe_failure

    full = describe_failure(WriteError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/shard.safetensors"))
    assert full.startswith("no space left to write /x/shard.safetensors") and "--resume" in full
    ro = describe_failure(PermissionError(errno.EROFS, os.strerror(errno.EROFS), "/x"))
    assert ro.startswith("cannot write /x (Read-only file system)")
    eio = describe_failure(WriteError(errno.EIO, "Input/output error (unexpected pos 704 vs 598)", "/x/a.pt"))
    assert (
        eio.startswith("could not write /x/a.pt (Input/output error (unexpected pos") and "free space" in eio
    )
    assert describe_failure(FolderLockedError("/x is in use by ...")) == "/x is in use by ..."
    assert describe_failure(RuntimeError("a bug")) is None and describe_failure(KeyError("k")) is None
