"""Four trials at once on 2 CPUs (half a CPU per worker), all reporting every step: every metric
row each trial reported (Tune's own result.json per trial) is in the MLflow store, once, with
its step and value. The driver is MLflow's only writer (design.md), so concurrency must not
lose or duplicate a row on its way there.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.spec import load_spec
from orchestrator.sweep.run import run_sweep
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def four_at_once(ray_cluster, base_cache, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("four_at_once")
    overrides = [
        "name=faults_concurrent", "sla.topk={grid: [0.125, 0.25, 0.5, 0.75]}", "control=false",
        "resources.cpus_per_worker=0.5", "max_concurrent_trials=4", "train.steps=2",
        "train.checkpoint_every=0", f"train.base_cache_dir={base_cache}",
    ]  # fmt: skip
    spec = load_spec(SMOKE, overrides, cwd=cwd, gpus_available=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the driver's progress lines
        outcome = run_sweep(spec)
    return outcome, out.getvalue()


def reported_rows(sweep_dir: Path, trial_id: str) -> list[tuple[str, int, float]]:
    """(metric, step, value) of every result the trial reported, from Tune's result.json."""
    (result_file,) = (sweep_dir / "tune").glob(f"*{trial_id}*/result.json")
    rows = []
    for line in result_file.read_text().splitlines():
        result = json.loads(line)
        for key, value in result.items():
            if "/" in key and isinstance(value, (int, float)) and math.isfinite(value):
                rows.append((key, int(result["step"]), float(value)))
    return rows


def test_four_trials_ran_at_once(four_at_once):
    outcome, out = four_at_once
    assert outcome.complete and len(outcome.rows) == 4
    assert all(r.status == "TERMINATED" for r in outcome.rows), [r.error for r in outcome.rows]
    assert "[4 running" in out, out


def test_every_metric_row_reaches_the_store(four_at_once):
    outcome, _ = four_at_once
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    total = 0
    for row in outcome.rows:
        expected = Counter(reported_rows(outcome.sweep_dir, row.trial_id))
        keys = {key for key, _, _ in expected}
        assert {"train/loss", "val/loss", "perf/step_s"} <= keys
        stored = Counter(
            (m.key, m.step, m.value)
            for key in keys
            for m in client.get_metric_history(row.run_id, key)
        )
        assert stored == expected, (row.trial_id, expected - stored, stored - expected)
        total += sum(expected.values())
    steps = outcome.rows[0].step + 1  # step 0 (evaluation before training) and every step
    assert total >= 4 * steps * 10, total
