"""Shared fixtures. One real local Ray cluster per pytest session, started only when a test asks
for it, by the tool's own start_local (token authentication on, every Ray server on 127.0.0.1,
the dashboard too: Train V2 needs it to free a stopped trial's resources)."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import pytest

# The tests' own cache root (base models, encoded clips, file digests), never the user's
# ~/.cache/sla-sweep; set before any Ray worker starts, so the workers see it too.
os.environ["SLA_SWEEP_CACHE"] = tempfile.mkdtemp(prefix="sla-sweep-test-cache-")

# The session's Ray token, never the user's ~/.ray/auth_token: every cluster the tests start and
# every driver they run (subprocesses inherit the environment) reads it from here.
RAY_TOKEN_PATH = Path(tempfile.mkdtemp(prefix="sla-sweep-test-ray-")) / "auth_token"
_fd = os.open(RAY_TOKEN_PATH, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(_fd, "w") as _f:
    _f.write(secrets.token_hex(32))
os.environ.pop("RAY_AUTH_TOKEN", None)
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(RAY_TOKEN_PATH)})


# Fixtures that run a whole sweep once per pytest process, and the test modules that read one
# (checked at collection): under pytest-xdist these modules all run on one worker, so each of
# these sweeps runs once (test_repeats.py reads both).
SHARED_SWEEPS = ("smoke_sweep", "lora_repeats")
SHARED_SWEEP_MODULES = frozenset(
    f"tests/orchestrator/{m}.py"
    for m in (
        "infer/test_command", "infer/test_compare", "infer/test_export",
        "infer/test_fault_checkpoints", "sweep/test_e2e", "sweep/test_fault_concurrent_logging",
        "tracking/test_mlflow_review", "sweep/test_repeats", "infer/test_fault_damaged_files",
        "ui/test_browser",
    )
)  # fmt: skip


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` (pyproject's addopts: 2 workers), with SHARED_SWEEP_MODULES as one
    scope: a test module runs whole on one worker (its module fixtures, often a sweep, computed
    once), and the modules reading a shared sweep run on one worker together. (pytest-xdist's
    own loadgroup does not group under pytest 9: it renames a test by an attribute pytest 9 no
    longer reads.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedSweepScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return "shared sweeps" if module in SHARED_SWEEP_MODULES else module

    return SharedSweepScopes(config, log)


def pytest_collection_modifyitems(config, items):
    """Refuse a collection where SHARED_SWEEP_MODULES is out of date: a module reading a shared
    sweep that is not listed (its sweep would run again on the other worker), or a listed one
    that reads none."""
    reads = {}
    for item in items:
        uses = any(f in getattr(item, "fixturenames", ()) for f in SHARED_SWEEPS)
        reads[_module(item.nodeid)] = reads.get(_module(item.nodeid), False) or uses
    missing = sorted(m for m, uses in reads.items() if uses and m not in SHARED_SWEEP_MODULES)
    stale = sorted(m for m, uses in reads.items() if not uses and m in SHARED_SWEEP_MODULES)
    if missing or stale:
        raise pytest.UsageError(
            f"tests/conftest.py SHARED_SWEEP_MODULES: add {missing}, remove {stale} (modules "
            f"that read one of {SHARED_SWEEPS} run on one pytest-xdist worker)"
        )


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's Ray cluster: yields its GCS address (for a second driver to join)."""
    import ray

    from orchestrator.sweep.cluster import start_local

    if ray.is_initialized():
        ray.shutdown()
    address_info = start_local(2, 0)
    try:
        yield address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def base_cache(tmp_path_factory) -> Path:
    """One cache of pre-trained base models for the whole session (the sweeps share the base)."""
    return tmp_path_factory.mktemp("base_models")
