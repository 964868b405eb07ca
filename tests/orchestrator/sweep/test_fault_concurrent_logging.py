"""Five trials at once on 2 CPUs (0.4 CPU per worker), all reporting every step: every metric
row each trial reported (Tune's own result.json per trial) is in the MLflow store, once, with
its step and value. The driver is MLflow's only writer (design.md), so concurrency must not
lose or duplicate a row on its way there.

The trials are a LoRA search over the learning rate and topk together (2 x 2 + the control), so
the same sweep shows training settings searched end to end: each trial ran with its own lr (its
checkpoint's trial.json, its MLflow params, the table and results.csv say so), checkpoints are
lean, and `compare` runs on it.
"""

from __future__ import annotations

import contextlib
import csv
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


LRS = (3.0e-4, 3.0e-3)


@pytest.fixture(scope="module")
def five_at_once(ray_cluster, base_cache, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("five_at_once")
    overrides = [
        "name=faults_concurrent", "sla.topk={grid: [0.25, 0.5]}", f"train.lr={{grid: {list(LRS)}}}",
        "train.lora={rank: 2}", "resources.cpus_per_worker=0.4", "max_concurrent_trials=5",
        "train.steps=2", "train.checkpoint_every=0", f"train.base_cache_dir={base_cache}",
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


def test_five_trials_ran_at_once(five_at_once):
    outcome, out = five_at_once
    assert outcome.complete and len(outcome.rows) == 5
    assert all(r.status == "TERMINATED" for r in outcome.rows), [r.error for r in outcome.rows]
    assert "[5 running" in out, out


def test_every_metric_row_reaches_the_store(five_at_once):
    outcome, _ = five_at_once
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
    assert total >= 5 * steps * 10, total


def test_each_trial_trained_with_its_own_learning_rate(five_at_once):
    outcome, out = five_at_once
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    chosen = set()
    for row in outcome.rows:
        lr = row.train["lr"]
        trial = json.loads((Path(row.checkpoint) / "trial.json").read_text())
        assert trial["train"]["lr"] == lr and trial["train"]["lora"]["rank"] == 2
        assert trial["checkpoint"] == "lean", "a LoRA checkpoint holds no copy of the base"
        params = client.get_run(row.run_id).data.params
        assert float(params["train.lr"]) == lr and params["train.lora.rank"] == "2"
        chosen.add((None if row.sla is None else row.sla["topk"], lr))
    assert chosen == {(0.25, LRS[0]), (0.25, LRS[1]), (0.5, LRS[0]), (0.5, LRS[1]), (None, LRS[0])}
    # the same topk with ten times the learning rate ends elsewhere
    loss = {(r.sla["topk"], r.train["lr"]): r.metrics["train/loss"] for r in outcome.rows if r.sla}
    assert loss[(0.25, LRS[0])] != loss[(0.25, LRS[1])]
    # the table and results.csv name the trials by both settings
    assert "topk=0.25 train.lr=0.003" in out
    with (outcome.sweep_dir / "results.csv").open() as fh:
        assert {float(r["train.lr"]) for r in csv.DictReader(fh)} == set(LRS)


def test_compare_runs_on_the_lora_sweep(five_at_once):
    from orchestrator.infer.compare import compare_sweep, format_comparison

    outcome, _ = five_at_once
    result = compare_sweep(outcome.sweep_dir, num_samples=1, device="cpu")
    assert len(result["trials"]) == 5 and result["trials"][0]["sla"] is None
    for trial in result["trials"][1:]:
        assert trial["psnr_vs_control_db"] > 0 and trial["sla_calls"] > 0
    assert "topk=0.5 train.lr=0.0003" in format_comparison(result)
