"""Orchestrator fixtures: one real smoke sweep per pytest session, shared by every test that
needs a finished sweep (inference, export, the MLflow UI). It runs experiments/smoke.yaml on the
session's local Ray cluster (tests/conftest.py) into a temporary directory, with a real MLflow
sqlite store.

SLA_SWEEP_TEST_SMOKE_DIR=<a finished smoke sweep directory> reuses that sweep's output instead
of running a new one (for iterating on the tests that read it; CI leaves it unset)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.paths import REPO

SMOKE_SPEC = REPO / "experiments" / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke_sweep(request, tmp_path_factory):
    """(spec, SweepOutcome) of experiments/smoke.yaml, run once per session."""
    from orchestrator.spec import load_spec
    from orchestrator.sweep.run import run_sweep

    existing = os.environ.get("SLA_SWEEP_TEST_SMOKE_DIR")
    if existing:
        return read_finished_sweep(Path(existing).resolve())
    request.getfixturevalue("ray_cluster")  # the session's one local Ray cluster
    base_cache = request.getfixturevalue("base_cache")
    cwd = tmp_path_factory.mktemp("smoke_sweep")
    spec = load_spec(SMOKE_SPEC, [f"train.base_cache_dir={base_cache}"], cwd=cwd, gpus_available=0)
    outcome = run_sweep(spec)
    assert outcome.complete, f"the smoke sweep did not finish: {outcome.sweep_dir}"
    errors = [f"{r.trial_id}: {r.error}" for r in outcome.rows if r.status != "TERMINATED"]
    assert not errors, f"smoke sweep trials failed: {errors}"
    return spec, outcome


def read_finished_sweep(sweep_dir: Path):
    """(spec, SweepOutcome) of a sweep that already ran, read back from its directory."""
    import json

    import yaml

    from orchestrator.report.table import best_row
    from orchestrator.spec import parse_spec
    from orchestrator.storage.records import load_rows
    from orchestrator.sweep.run import SweepOutcome

    spec = parse_spec(yaml.safe_load((sweep_dir / "spec.yaml").read_text()), source=str(sweep_dir))
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    rows = list(load_rows(sweep_dir).values())
    timings = json.loads((sweep_dir / "timings.json").read_text())
    best = best_row(rows, spec.metric, spec.mode)
    outcome = SweepOutcome(
        sweep_dir, rows, best, True, meta["tracking_uri"], meta["parent_run_id"], timings
    )
    return spec, outcome


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Wan2.1-style pipeline (diffusers/transformers classes), built once."""
    from tests.pipelines import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("pipelines"))


@pytest.fixture(scope="session")
def caption_folder(tmp_path_factory) -> Path:
    """Six real 9-frame 32x32 MP4 clips, captions half as sidecar .txt, half in metadata.jsonl."""
    from tests.media import write_caption_folder

    root = tmp_path_factory.mktemp("clips")
    write_caption_folder(root, n=6, frames=9, size=(32, 32), fps=8)
    return root


@pytest.fixture
def no_cluster(monkeypatch):
    """Fails the test if the command under test gets as far as joining or starting Ray (the
    session's own cluster may be up already, so "is Ray initialised" cannot tell)."""
    import orchestrator.sweep.run as run

    def refuse(*args, **kwargs):
        raise AssertionError("the command reached Ray: bad input must stop before it")

    monkeypatch.setattr(run, "connect", refuse)


@pytest.fixture
def clips(tmp_path) -> Path:
    """A folder of four captioned 9-frame 32x32 clips of this test's own (it may damage them)."""
    from tests.media import write_caption_folder

    root = tmp_path / "clips"
    write_caption_folder(root, n=4, frames=9, size=(32, 32))
    return root
