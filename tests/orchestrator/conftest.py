"""Orchestrator fixtures: one real smoke sweep per pytest session, shared by every test that
needs a finished sweep (inference, export, the MLflow UI). It runs experiments/smoke.yaml on the
session's local Ray cluster (tests/conftest.py) into a temporary directory, with a real MLflow
sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE_SPEC = REPO / "experiments" / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke_sweep(ray_cluster, base_cache, tmp_path_factory):
    """(spec, SweepOutcome) of experiments/smoke.yaml, run once per session."""
    from orchestrator.spec import load_spec
    from orchestrator.sweep import run_sweep

    cwd = tmp_path_factory.mktemp("smoke_sweep")
    spec = load_spec(SMOKE_SPEC, [f"train.base_cache_dir={base_cache}"], cwd=cwd, gpus_available=0)
    outcome = run_sweep(spec)
    assert outcome.complete, f"the smoke sweep did not finish: {outcome.sweep_dir}"
    errors = [f"{r.trial_id}: {r.error}" for r in outcome.rows if r.status != "TERMINATED"]
    assert not errors, f"smoke sweep trials failed: {errors}"
    return spec, outcome
