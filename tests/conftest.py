"""Shared fixtures. One real local Ray cluster per pytest session, started only when a test asks
for it (never two clusters on one host), with the dashboard on 127.0.0.1 (Train V2 needs it to
free a stopped trial's resources) and no auth token file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# The tests' own cache root (base models, encoded clips, file digests), never the user's
# ~/.cache/sla-sweep; set before any Ray worker starts, so the workers see it too.
os.environ["SLA_SWEEP_CACHE"] = tempfile.mkdtemp(prefix="sla-sweep-test-cache-")


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's Ray cluster: yields its GCS address (for a second driver to join)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    if ray.is_initialized():
        ray.shutdown()
    context = ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
    )
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def base_cache(tmp_path_factory) -> Path:
    """One cache of pre-trained base models for the whole session (the sweeps share the base)."""
    return tmp_path_factory.mktemp("base_models")
