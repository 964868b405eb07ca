"""A folder made read-only for real, for the tests of what a command does on a read-only
filesystem: permission bits for a user, a read-only bind mount for root (whom permission bits do
not stop; the test is skipped where mounting is refused)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` and everything in it read-only until the block ends."""
    if os.geteuid() != 0:
        paths = [folder, *folder.rglob("*")]
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p in reversed(paths):
                p.chmod(modes[p])
        return
    made = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot bind-mount {folder} read-only here: {made.stderr.decode().strip()}")
    try:
        ro = ["mount", "-o", "remount,bind,ro", str(folder), str(folder)]
        subprocess.run(ro, check=True, capture_output=True)
        with pytest.raises(OSError):
            (folder / "probe").write_text("")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)
