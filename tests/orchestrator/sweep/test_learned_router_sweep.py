"""router fixed and router learned side by side in a sweep (issue 36): two trials of the tiny
preset (experiments/smoke.yaml, topk 0.5, mix alpha, no control, two steps) on the session's real
local Ray cluster with a real MLflow store. The results table, results.csv, the MLflow child runs'
params and the report name the setting; the learned trial's checkpoint holds trained projections."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.spec import load_spec
from orchestrator.sweep.run import run_sweep
from sla_kernel_glue import read_sla_state
from tests.paths import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def router_sweep(ray_cluster, base_cache, tmp_path_factory):
    """(SweepOutcome, the driver's stdout) of the two-trial router sweep."""
    cwd = tmp_path_factory.mktemp("router_sweep")
    overrides = [
        "name=router_sweep", "sla.topk=0.5", "sla.router={grid: [fixed, learned]}",
        "sla.mix=alpha", "control=false", "train.steps=2", "train.checkpoint_every=0",
        "resources.cpus_per_worker=0.5", f"train.base_cache_dir={base_cache}",
    ]  # fmt: skip
    spec = load_spec(REPO / "experiments" / "smoke.yaml", overrides, cwd=cwd, gpus_available=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the driver's progress lines and the table
        outcome = run_sweep(spec)
    return outcome, out.getvalue()


def test_both_routers_run_and_every_view_names_them(router_sweep):
    outcome, stdout = router_sweep
    assert outcome.complete and len(outcome.rows) == 2
    assert all(r.status == "TERMINATED" for r in outcome.rows), [r.error for r in outcome.rows]
    assert sorted(r.sla["router"] for r in outcome.rows) == ["fixed", "learned"]
    # the table and the report label configs by what differs between them: the router
    for name in ("router=fixed", "router=learned"):
        assert name in stdout, stdout[-3000:]
    report = (outcome.sweep_dir / "report" / "report.md").read_text()
    assert "router=fixed" in report and "router=learned" in report
    with (outcome.sweep_dir / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["sla.router"] for r in rows) == ["fixed", "learned"]
    assert {r["sla.mix"] for r in rows} == {"alpha"}
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    params = [client.get_run(r.run_id).data.params for r in outcome.rows]
    assert sorted(p["sla.router"] for p in params) == ["fixed", "learned"]
    assert {p["sla.mix"] for p in params} == {"alpha"}


def test_the_learned_trial_checkpoint_holds_trained_projections(router_sweep):
    outcome, _ = router_sweep
    learned = next(r for r in outcome.rows if r.sla["router"] == "learned")
    fixed = next(r for r in outcome.rows if r.sla["router"] == "fixed")
    layers = read_sla_state(Path(learned.checkpoint) / "sla_attention.pt")["layers"]
    for path, entry in layers.items():
        assert not torch.equal(entry["state"]["router_q.weight"], torch.eye(32)), path
    fixed_state = read_sla_state(Path(fixed.checkpoint) / "sla_attention.pt")["layers"]
    assert all("router_q.weight" not in e["state"] for e in fixed_state.values())
    assert all("alpha" in e["state"] for e in fixed_state.values())
