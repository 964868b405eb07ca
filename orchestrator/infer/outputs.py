"""The folder `sla-sweep infer` writes into: it touches and uploads only files it wrote itself.

`--out DIR` (default <sweep>/samples/<trial>-<attention>-seed<S>) must be new, empty, or a
folder infer wrote before: one that holds its manifest, infer_outputs.json, the list of the
files that run wrote. A non-empty folder without the manifest is refused before anything is
generated. A rerun into its own folder removes the files the manifest lists (the earlier run's,
whatever its seed) and nothing else, refuses to overwrite any file the manifest does not list,
records its own files in the manifest before writing them, and only those files go to MLflow.

    folder = OutputFolder.claim(out_dir)         # the check: nothing written yet
    folder.replace(["00_a-digit_seed0.mp4", ...])  # the earlier run's files out, the manifest in
    ...write the files...
    OutputFolder.claim(out_dir).files()          # what the last run wrote: what gets uploaded
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from orchestrator.infer.errors import InferenceError

MANIFEST = "infer_outputs.json"
WRITER = "sla-sweep infer"


@dataclasses.dataclass(frozen=True)
class OutputFolder:
    """An output folder infer may write into, and the files its manifest lists."""

    path: Path
    listed: tuple[str, ...]  # the manifest's files (the last run's); () for a new or empty folder

    @classmethod
    def claim(cls, path: Path) -> OutputFolder:
        """`path` checked, nothing written: absent, an empty directory, or a directory with
        infer's manifest; InferenceError (one line naming it) for anything else."""
        path = Path(path)
        if not path.exists():
            if path.is_symlink():
                raise InferenceError(f"--out ({path}) is a symbolic link to nothing; choose a path")
            return cls(path, ())
        if not path.is_dir():
            raise InferenceError(f"--out ({path}) exists and is not a directory; choose a new path")
        manifest = path / MANIFEST
        if os.path.lexists(manifest):
            return cls(path, _read_manifest(manifest))
        if any(path.iterdir()):
            raise InferenceError(
                f"--out ({path}) is not empty and has no {MANIFEST} (sla-sweep infer did not "
                "write it): infer writes only into a new or empty directory or one of its own; "
                "choose another --out"
            )
        return cls(path, ())

    def check(self, names: Sequence[str]) -> OutputFolder:
        """The folder as it is now, when infer may write the files `names` (plain file names)
        into it; InferenceError (one line) when one of them exists and the manifest does not
        list it. Nothing is written."""
        now = OutputFolder.claim(self.path)
        for name in names:
            _check_name(name, MANIFEST)
            target = self.path / name
            if os.path.lexists(target) and name not in now.listed:
                raise InferenceError(
                    f"{target} exists and sla-sweep infer did not write it (not in {MANIFEST}); "
                    "infer does not overwrite it: move it or choose another --out"
                )
        return now

    def replace(self, names: Sequence[str]) -> list[Path]:
        """Make room for this run's files `names`: refused as by check (nothing touched);
        otherwise the files the manifest lists are removed and `names` become the manifest.
        Returns the paths to write."""
        now = self.check(names)  # the folder as it is now, not as at the start
        self.path.mkdir(parents=True, exist_ok=True)
        for name in now.listed:
            (self.path / name).unlink(missing_ok=True)  # a link itself, never what it points at
        _write_manifest(self.path / MANIFEST, list(names))
        return [self.path / name for name in names]

    def files(self) -> list[Path]:
        """The manifest's files that exist, as plain files (what the last run wrote)."""
        paths = [self.path / name for name in self.listed]
        return [p for p in paths if p.is_file() and not p.is_symlink()]


def _check_name(name: str, manifest: Path | str) -> None:
    if not name or name in (".", "..", MANIFEST) or "/" in name or "\\" in name or "\0" in name:
        raise InferenceError(f"{manifest}: {name!r} is not a file name infer writes")


def _read_manifest(manifest: Path) -> tuple[str, ...]:
    try:
        if manifest.is_symlink() or not manifest.is_file():
            raise ValueError("not a plain file")
        meta = json.loads(manifest.read_text())
        if not isinstance(meta, dict) or meta.get("writer") != WRITER:
            raise ValueError(f"its writer is not {WRITER!r}")
        names = meta.get("files")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("'files' is not a list of names")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InferenceError(
            f"{manifest}: not a readable sla-sweep infer manifest ({exc}); choose another --out"
        ) from None
    for name in names:
        _check_name(name, manifest)
    return tuple(names)


def _write_manifest(manifest: Path, names: list[str]) -> None:
    """Written whole (a temporary file renamed over it): a crash leaves the old or the new one."""
    partial = manifest.with_name(f".{MANIFEST}.{os.getpid()}.partial")
    partial.write_text(json.dumps({"writer": WRITER, "files": names}, indent=2) + "\n")
    os.replace(partial, manifest)
