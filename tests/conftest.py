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


# The modules whose tests read a shared sweep (smoke_sweep, lora_repeats) run on one pytest-xdist
# worker together, found from the fixtures they request: tests/shared_sweeps.py. pytester runs
# a small project for tests/test_shared_sweeps.py.
pytest_plugins = ("tests.shared_sweeps", "pytester")


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
