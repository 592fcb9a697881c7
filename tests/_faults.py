"""Fault injection shared by the reliability tests (not a test module): hard kills at chosen or random
moments of a run, a Ctrl-C at the n-th call of a function, a folder that cannot be written, and the lock file
a run holds."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK_FILE = ".segcompass.lock"
"""What `sae.files.lock` calls the lock file of an output folder (spelled out: it must not import it)."""


def wait_until(predicate: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 600,
               what: str = "the condition") -> bool:  # fmt: skip
    """Poll `predicate` until it holds (True) or `proc` ends first (False); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)
    return True


def interrupted_on_call(function: Callable, n: int) -> Callable:
    """`function`, except that its `n`-th call raises KeyboardInterrupt (a Ctrl-C at that moment)."""
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            raise KeyboardInterrupt
        return function(*args, **kwargs)

    return wrapper


def kill_9(proc: subprocess.Popen) -> bool:
    """SIGKILL `proc` and reap it; True when it was still running (a real interruption)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive and proc.returncode == -signal.SIGKILL


def holds_lock(folder: Path, pid: int) -> bool:
    """Whether the process `pid` has taken `folder`'s lock (its pid is recorded in the lock file)."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


def timed_run(start: Callable[[], subprocess.Popen], folder: Path, timeout: float = 900) -> float:
    """Run `start()` to completion (exit code 0); returns the seconds it held `folder`'s lock."""
    proc = start()
    assert wait_until(lambda: holds_lock(folder, proc.pid), proc, timeout, "lock"), _tail(proc)
    t0 = time.monotonic()
    assert proc.wait(timeout=timeout) == 0, _tail(proc)
    return time.monotonic() - t0


def kill_at_random_points(
    start: Callable[[], subprocess.Popen], folder: Path, window: float, *, attempts: int = 3, seed: int = 0
) -> int:
    """Start the run `attempts` times; each time, once it holds `folder`'s lock, SIGKILL it after a random
    delay in [0.05, 0.7) × `window` s (a run that already finished is left alone). Returns how many runs were
    killed while running. The delays stay well inside the reference duration `window`: a kill drawn near its
    end would miss whenever this run is a little faster than the reference was."""
    rng = random.Random(seed)
    killed = 0
    for _ in range(attempts):
        delay = rng.uniform(0.05, 0.7) * window
        proc = start()
        if wait_until(lambda p=proc: holds_lock(folder, p.pid), proc, what="lock"):
            time.sleep(delay)
        killed += kill_9(proc)
    return killed


def _tail(proc: subprocess.Popen) -> str:
    err = proc.stderr.read().decode() if proc.stderr is not None else ""
    return err[-3000:]


def make_unwritable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `folder` (existing) refuse new files: chmod 0555, or — where that does not bind (root) — make
    this process's `open`, `os.open` and `os.mkdir` raise EACCES for new entries under it."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.touch()
    except PermissionError:
        return  # the permission binds (not root)
    probe.unlink()
    root = str(folder.resolve())

    def inside(path) -> bool:
        try:
            return os.path.realpath(os.fspath(path)).startswith(root + os.sep)
        except TypeError:
            return False

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def open_(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+") and not os.path.exists(file):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & os.O_CREAT and not os.path.exists(path):
            raise denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path) and not os.path.exists(path):
            raise denied(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)  # pathlib's
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)


_HOLD = """
import sys, time
from sae.files import FolderLock
FolderLock(sys.argv[1], "a test holder").acquire()
print("locked", flush=True)
time.sleep(900)
"""


@contextlib.contextmanager
def lock_held_elsewhere(folder: Path) -> Iterator[subprocess.Popen]:
    """Another process holds `folder`'s lock for the block (it is SIGKILLed at the end)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)  # fmt: skip
    try:
        line = proc.stdout.readline().decode().strip()
        assert line == "locked", _tail(proc)
        yield proc
    finally:
        kill_9(proc)
