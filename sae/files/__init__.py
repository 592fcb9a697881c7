"""Files written safely: atomic writes and folders, umask modes, output-folder locks, report publishing,
and errors that name the file."""

from .atomic import atomic_write, atomic_write_text, fsync_dir, fsync_file, fsync_tree, staged_folder
from .errors import CorruptFileError, WriteError, raise_write_failure, read_json, write_failure
from .lock import LOCK_FILE, FolderLock, FolderLockedError, lock_output
from .modes import apply_umask, apply_umask_tree, process_umask

__all__ = [
    "LOCK_FILE",
    "CorruptFileError",
    "FolderLock",
    "FolderLockedError",
    "WriteError",
    "apply_umask",
    "apply_umask_tree",
    "atomic_write",
    "atomic_write_text",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "lock_output",
    "process_umask",
    "raise_write_failure",
    "read_json",
    "staged_folder",
    "write_failure",
]
