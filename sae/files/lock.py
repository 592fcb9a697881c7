"""One exclusive lock per output folder, so two runs never write into the same folder.

The lock is `fcntl.flock` on `<folder>/.segcompass.lock`: the kernel drops it when its process ends, however
it ends, so a lock left by a killed run (kill -9, power loss of a local disk) is stale by construction and the
next run takes it over — the file left behind only tells whose it was (pid, host, command, start time), which
the next run logs, and which a refused run prints. The file is removed when the run ends normally.

Taking the lock creates the folder and a file in it, so it is also the check that the folder is writable,
done before any computation. Under torchrun rank 0 takes the lock and every rank fails alike when it cannot.
A lock is re-entrant within a process (a pipeline that writes two reports into one folder). A folder the
lock created is removed again when the run leaves it empty (a refused run leaves no trace).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import write_failure

logger = logging.getLogger(__name__)

LOCK_FILE = ".segcompass.lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTSUP, errno.EINVAL}


class FolderLockedError(RuntimeError):
    """Another live run holds the folder's lock (the message names it and what to do)."""


@dataclass
class _Held:
    fd: int | None
    count: int
    pid: int


_held: dict[str, _Held] = {}


def holder_info(what: str) -> dict[str, Any]:
    """What this process records in a lock it holds."""
    return {
        "what": what,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _who(info: dict[str, Any]) -> str:
    text = f"{info.get('what', 'a run')} (pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}"
    return text + (f": `{info['command']}`)" if info.get("command") else ")")


def describe_holder(info: dict[str, Any] | None) -> str:
    """Who holds a lock, from what its file records."""
    if not info:
        return "another run (it is starting up)"
    text = _who(info)
    pid = info.get("pid")
    if info.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        text += "; that process has ended, but a process it started still holds the lock"
    return text


class FolderLock:
    """The exclusive lock of one output folder (`with FolderLock(out, "SAE training"): ...`); `name` picks
    another lock file in it, for a lock of something beside the folder's other entries (a cached stage's
    `.<key>.lock`)."""

    def __init__(self, folder: str | os.PathLike, what: str, name: str = LOCK_FILE) -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / name
        self._key: str | None = None
        self._created = False

    def acquire(self) -> None:
        """Take the lock (creating the folder); raises `FolderLockedError` when a live run holds it, and a
        `WriteError` naming the folder when it cannot be written."""
        try:
            self._created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_failure(err, self.folder) from err
        key = os.path.join(os.path.realpath(self.folder), self.path.name)
        held = _held.get(key)
        if held is not None and held.pid == os.getpid():
            held.count += 1
            self._key = key
            return
        fd = self._lock_file()
        previous = _read_holder(self.path)
        if previous and previous.get("pid") != os.getpid():
            logger.warning(
                "%s: taking over the lock left by %s; that run ended without releasing it",
                self.folder,
                _who(previous),
            )
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder_info(self.what)).encode(), 0)
        _held[key] = _Held(fd, 1, os.getpid())
        self._key = key

    def _lock_file(self) -> int | None:
        """Open and flock the lock file; retry when a releasing holder unlinked it in between."""
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as err:
                raise write_failure(err, self.folder) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderLockedError(
                    f"{self.folder} is in use by {describe_holder(_read_holder(self.path))}; wait for that run "
                    f"to finish or write to another folder (the lock is {self.path})"
                ) from None
            except OSError as err:
                if err.errno not in _NO_FLOCK:
                    os.close(fd)
                    raise
                logger.warning(
                    "%s: the file system cannot lock files (%s); concurrent runs into it are not detected",
                    self.folder,
                    err.strerror,
                )
                return fd
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # the previous holder removed the file between our open and flock: start over
            time.sleep(0.01)
        raise FolderLockedError(f"{self.folder}: could not take the lock {self.path}; retry")

    def release(self) -> None:
        """Release (the outermost release removes the lock file, then drops the lock)."""
        key, self._key = self._key, None
        if key is None:
            return
        held = _held[key]
        held.count -= 1
        if held.count > 0:
            return
        del _held[key]
        with contextlib.suppress(OSError):
            self.path.unlink()
        if held.fd is not None:
            os.close(held.fd)
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def lock_output(folder: str | os.PathLike, what: str) -> Iterator[FolderLock]:
    """Hold `folder`'s lock for the block. Under torch.distributed rank 0 takes it and broadcasts the
    outcome, so every rank raises the same error when it cannot be taken."""
    dist = _process_group()
    lock = FolderLock(folder, what)
    main = dist is None or dist.get_rank() == 0
    error: BaseException | None = None
    if main:
        try:
            lock.acquire()
        except Exception as err:
            if dist is None:
                raise
            error = err  # every rank raises it, instead of waiting for rank 0 forever
    if dist is not None:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        if main:
            lock.release()


def _process_group() -> Any:
    """torch.distributed when a process group of several ranks is running, else None (torch is not
    imported for it)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return dist
