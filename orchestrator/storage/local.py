"""This machine's side of storage: the cache root every sweep of this user shares, and a file lock
that makes concurrent processes on one node do a thing once."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def default_cache_root() -> Path:
    """$SLA_SWEEP_CACHE, else ~/.cache/sla-sweep: shared by every sweep of this user."""
    return Path(os.environ.get("SLA_SWEEP_CACHE", "~/.cache/sla-sweep")).expanduser()


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True):
    """An exclusive lock on `path` (created) for the block: one process at a time, across processes.
    The lock dies with its holder (flock). wait=False: BlockingIOError at once when another process
    holds it. Yields the open lock file."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
