"""The experiment's `storage:` section: where sweeps live (a directory or a URI such as
s3://bucket/prefix) and the MLflow tracking store."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator.spec.schema import DEFAULT_RESULTS_DIR, StorageSpec, sqlite_store
from orchestrator.storage import is_uri, redact, uri_problem
from orchestrator.values import shown


def parse_storage(sec: Mapping, cwd: Path, errors: list[str]) -> StorageSpec:
    """storage: {results_dir, tracking_uri}; problems appended to `errors` (unknown keys are
    the caller's). Relative paths resolve against `cwd`."""
    results = sec.get("results_dir", DEFAULT_RESULTS_DIR)
    if not isinstance(results, str) or not results:
        errors.append(f"storage.results_dir ({shown(results)}) must be a directory path or a URI")
        results = DEFAULT_RESULTS_DIR
    problem = uri_problem(results)
    if problem:
        errors.append(f"storage.results_dir ({shown(redact(results))}) {problem}")
        results = DEFAULT_RESULTS_DIR
    if is_uri(results):
        return _remote_storage(results.rstrip("/"), sec.get("tracking_uri"), cwd, errors)
    if results.lower().startswith("file://"):
        results = results[len("file://") :]
    results_dir = (cwd / Path(results).expanduser()).resolve()
    problem = _directory_problem(results_dir)
    if problem:
        errors.append(f"storage.results_dir ({shown(results)}) {problem}")
    uri = sec.get("tracking_uri")
    uri = sqlite_store(results_dir) if uri is None else _tracking_uri(uri, cwd, errors)
    return StorageSpec(results_dir=results_dir, tracking_uri=uri)


def _remote_storage(results: str, uri: Any, cwd: Path, errors: list[str]) -> StorageSpec:
    """A bucket as results_dir: the default sqlite store cannot live in it, so a tracking URI
    must be given (a server, for trials on several machines)."""
    if uri is None:
        errors.append(
            f"storage.tracking_uri must be given when storage.results_dir ({results!r}) is a URI: "
            "the default sqlite store cannot live in a bucket; give an MLflow server "
            "(http://HOST:PORT) or a database URI"
        )
        return StorageSpec(results_dir=results, tracking_uri="")
    return StorageSpec(results_dir=results, tracking_uri=_tracking_uri(uri, cwd, errors))


def _tracking_uri(uri: Any, cwd: Path, errors: list[str]) -> str:
    if not isinstance(uri, str) or not re.match(
        r"^(sqlite|postgresql|mysql|https?|databricks)", uri
    ):
        errors.append(
            f"storage.tracking_uri ({shown(uri)}) must be a sqlite:///, postgresql://, mysql:// or "
            "http(s):// tracking URI"
        )
        return str(uri)
    problem = port_problem(uri)
    if problem:
        errors.append(f"storage.tracking_uri ({shown(redact(uri))}) {problem}")
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # a relative sqlite path would move with Ray's per-trial working directories
        return f"sqlite:///{(cwd / uri[len('sqlite:///') :]).resolve()}"
    return uri


def port_problem(uri: str) -> str | None:
    """What is wrong with a tracking URI's port (not a number, out of range); None when it has
    none or a good one."""
    netloc = urlsplit(uri).netloc.rpartition("@")[2]
    if netloc.startswith("["):  # [IPv6]:port
        netloc = netloc.partition("]")[2]
    port = netloc.partition(":")[2]
    if not port or (port.isdigit() and 0 < int(port) < 65536):
        return None
    scheme = uri.partition("://")[0]
    return f"has port {shown(port)}, not a number from 1 to 65535; write it as {scheme}://HOST:PORT"


SPECIAL_ROOTS = (Path("/proc"), Path("/sys"))  # /dev/null and the like: special files


def _directory_problem(path: Path) -> str | None:
    """Why `path` (resolved) cannot be, or become, a directory of sweeps; None when it can."""
    if any(path == root or root in path.parents for root in SPECIAL_ROOTS):
        return f"is {path}, a special path; give a directory on a disk"
    for p in (path, *path.parents):
        if not p.exists():
            continue
        if p.is_dir():
            return None
        what = "a regular file" if p.is_file() else "a special file"
        return f"is {what}" if p == path else f"is under {p}, {what}"
    return None
