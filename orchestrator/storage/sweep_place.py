"""Where a sweep lives: a directory, or a prefix in a bucket (storage.results_dir a URI).

For a bucket, Ray Tune's state (tune/), the Train runs' checkpoints (train/) and the base
reference are written there by Ray and the trials themselves; the sweep's own small files
(spec.yaml, sweep.json, trials.json, results.csv, the plots, report/, timings.json) are written
by the driver into a working copy on its disk, <cache>/remote/sweeps/<digest of the URI>/<name>,
and uploaded as they change (after every trial event and at the end). A reader (`best`, `infer`,
`resume` on another machine) pulls them into the same kind of working copy. Checkpoints are
never assumed local: `localize` fetches the ones a command needs into the content-keyed cache
(orchestrator.storage.local_copy).
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import shutil
import time
from pathlib import Path

import pyarrow as pa

from orchestrator.spec import SpecError
from orchestrator.storage import (
    Location,
    StorageError,
    cache_root,
    check_reachable,
    download_dir,
    is_uri,
    local_copy,
    open_location,
)

STORAGE_KEY = "storage"  # sweep.json: the sweep's URI when it lives in a bucket
RAY_DIRS = ("train", "tune", "base_reference")  # written by Ray and the trials, not the driver
# Never uploaded: a lock only means something on its host, and the MLflow buffer's spool holds
# hard links to this host's files for artifacts not yet sent (mlflow_buffer.SPOOL).
LOCAL_ONLY = ("driver.lock", "mlflow_spool")
SWEEP_FILE = "sweep.json"


@dataclasses.dataclass
class SweepPlace:
    """A sweep's working directory on this machine and, for a bucket, the sweep in it."""

    local: Path
    remote: Location | None = None
    _pushed: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def uri(self) -> str:
        """What a user passes to resume/best/infer: the bucket URI, or the directory."""
        return self.remote.uri if self.remote else str(self.local)

    def ray_storage(self, sub: str) -> str:
        """Ray's storage_path for tune/ or train/ (a URI: Ray opens it with pyarrow itself)."""
        return self.remote.join(sub).uri if self.remote else str(self.local / sub)

    def exists(self, name: str) -> bool:
        """Whether the sweep has `name` (a path in it), wherever it is kept."""
        return self.remote.join(name).is_file() if self.remote else (self.local / name).is_file()

    def push(self, *, strict: bool = False) -> None:
        """Upload the driver's files that changed since the last push. A store that refuses is
        told in one line and retried at the next push (strict: StorageError)."""
        if self.remote is None:
            return
        try:
            for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
                rel = path.relative_to(self.local).as_posix()
                if rel.split("/", 1)[0] in RAY_DIRS + LOCAL_ONLY or ".tmp-" in path.name:
                    continue
                stat = path.stat()
                if self._pushed.get(rel) == (stat.st_mtime_ns, stat.st_size):
                    continue
                self.remote.join(rel).write_bytes(path.read_bytes())
                self._pushed[rel] = (stat.st_mtime_ns, stat.st_size)
        except (OSError, pa.ArrowException) as exc:
            line = f"could not upload the sweep's files to {self.remote.uri}: {_first_line(exc)}"
            if strict:
                raise StorageError(line) from None
            print(f"[sla-sweep] {line} (retried at the next update)", flush=True)

    def pull(self) -> None:
        """Fetch the sweep's own files (not its checkpoints) into the working copy."""
        if self.remote is None:
            return
        fresh = self.local.with_name(f".{self.local.name}.pull")
        shutil.rmtree(fresh, ignore_errors=True)
        download_dir(self.remote, fresh, skip=RAY_DIRS)
        for path in sorted(p for p in fresh.rglob("*") if p.is_file()):
            target = self.local / path.relative_to(fresh)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
        shutil.rmtree(fresh, ignore_errors=True)

    def fetch_trial_results(self) -> int:
        """For a bucket: copy each trial's result.json (what it reported, step by step) from
        Tune's folder in the bucket into the working copy's, for the report's loss curves; the
        number copied. A store that refuses is told in one line (the curves stay empty)."""
        if self.remote is None:
            return 0
        tune = self.remote.join("tune")
        try:
            return download_dir(
                tune, self.local / "tune", only=lambda rel: posixpath.basename(rel) == "result.json"
            )
        except (OSError, pa.ArrowException) as exc:
            print(f"[sla-sweep] could not fetch the trials' results from {tune.uri}: "
                  f"{_first_line(exc)} (the report's loss curves are left empty)", flush=True)  # fmt: skip
            return 0

    def checkpoint(self, recorded: str | None) -> Location | None:
        """Where a checkpoint path recorded in trials.json lives (Ray records paths inside the
        storage's filesystem, without the scheme)."""
        if not recorded:
            return None
        if self.remote is None:
            return open_location(recorded, what="checkpoint")
        return self.remote.with_path(recorded)

    def localize(self, recorded: str | None, *, log=None) -> str | None:
        """A checkpoint as a local directory (fetched once per node); None when there is none."""
        loc = self.checkpoint(recorded)
        if loc is None or self.remote is None:
            return recorded
        try:
            return str(local_copy(loc, log=log))
        except StorageError:
            return None
        except (OSError, pa.ArrowException) as exc:  # the store away: this checkpoint unread
            if log is not None:
                log(f"could not fetch {loc.uri}: {_first_line(exc)}")
            return None


def working_copy(sweep: Location) -> Path:
    """The working directory on this machine of the sweep at `sweep` (a bucket prefix)."""
    digest = hashlib.sha256(sweep.uri.encode()).hexdigest()[:16]
    return cache_root() / "remote" / "sweeps" / digest / sweep.name


def new_place(results_dir: Path | str, name: str) -> SweepPlace:
    """A new, empty sweep <results_dir>/<name>-<YYYYmmdd-HHMMSS>[-n]."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = [f"{name}-{stamp}" + (f"-{i}" if i else "") for i in range(100)]
    if not isinstance(results_dir, str):
        results_dir.mkdir(parents=True, exist_ok=True)
        for candidate in names:
            try:
                (results_dir / candidate).mkdir()
                return SweepPlace(results_dir / candidate)
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a new sweep directory under {results_dir}")
    base = open_location(results_dir)
    for candidate in names:
        sweep = base.join(candidate)
        if not sweep.exists():
            local = working_copy(sweep)
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
            return SweepPlace(local, sweep)
    raise RuntimeError(f"could not find a new sweep name under {results_dir}")


def open_place(target: str | Path) -> SweepPlace:
    """The sweep at `target` (a directory or a URI); for a URI its files pulled into the
    working copy. SpecError (one line) when there is no sweep there."""
    text = str(target)
    if not is_uri(text):
        return SweepPlace(Path(text).expanduser().resolve())
    try:
        sweep = open_location(text, what="sweep")
        check_reachable(sweep, what="sweep")
        found = sweep.join(SWEEP_FILE).is_file()
    except StorageError as exc:
        raise SpecError(text, [str(exc)]) from None
    except (OSError, pa.ArrowException) as exc:
        raise SpecError(text, [f"cannot read the sweep: {_first_line(exc)}"]) from None
    if not found:
        raise SpecError(text, [f"not a sweep (no {SWEEP_FILE} there)"])
    place = SweepPlace(working_copy(sweep), sweep)
    place.local.mkdir(parents=True, exist_ok=True)
    place.pull()
    return place


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
