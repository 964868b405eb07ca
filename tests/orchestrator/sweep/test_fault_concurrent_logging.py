"""Five trials at once on 2 CPUs (0.4 CPU per worker), all reporting every step: every metric
row each trial reported (Tune's own result.json per trial) is in the MLflow store, once, with
its step and value. The driver is MLflow's only writer (design.md), so concurrency must not
lose or duplicate a row on its way there.

The sweep (conftest.py's `lora_repeats`, shared with test_repeats.py) is a LoRA search over the
learning rate at topk 0.5 with the control, each run twice: six trials. So it also shows
training settings searched end to end: each trial ran with its own lr (its checkpoint's
trial.json, its MLflow params, the table and results.csv say so), checkpoints are lean, and
`compare` runs on it.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.orchestrator.sweep.conftest import LRS

pytestmark = pytest.mark.slow


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


def test_five_trials_ran_at_once(lora_repeats):
    _, outcome, out = lora_repeats
    assert outcome.complete and len(outcome.rows) == 6
    assert all(r.status == "TERMINATED" for r in outcome.rows), [r.error for r in outcome.rows]
    assert "[5 running" in out, out


def test_every_metric_row_reaches_the_store(lora_repeats):
    _, outcome, _ = lora_repeats
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
    assert total >= 6 * steps * 10, total


def test_each_trial_trained_with_its_own_learning_rate(lora_repeats):
    _, outcome, out = lora_repeats
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    chosen = set()
    for row in outcome.rows:
        lr = row.train["lr"]
        trial = json.loads((Path(row.checkpoint) / "trial.json").read_text())
        assert trial["train"]["lr"] == lr and trial["train"]["lora"]["rank"] == 2
        assert trial["checkpoint"] == "lean", "a LoRA checkpoint holds no copy of the base"
        params = client.get_run(row.run_id).data.params
        assert float(params["train.lr"]) == lr and params["train.lora.rank"] == "2"
        chosen.add((None if row.sla is None else row.sla["topk"], lr, row.train["seed"]))
    assert chosen == {(t, lr, seed) for t, lr in ((0.5, LRS[0]), (0.5, LRS[1]), (None, LRS[0]))
                      for seed in (0, 1)}  # fmt: skip
    # the same topk and seed with ten times the learning rate ends elsewhere
    loss = {
        (r.train["lr"], r.train["seed"]): r.metrics["train/loss"] for r in outcome.rows if r.sla
    }
    assert loss[(LRS[0], 0)] != loss[(LRS[1], 0)]
    # the table and results.csv name the trials by the searched setting
    assert "train.lr=0.003" in out
    with (outcome.sweep_dir / "results.csv").open() as fh:
        assert {float(r["train.lr"]) for r in csv.DictReader(fh)} == set(LRS)


def test_compare_runs_on_the_lora_sweep(lora_repeats):
    from orchestrator.infer.compare import compare_sweep, format_comparison

    _, outcome, _ = lora_repeats
    result = compare_sweep(outcome.sweep_dir, num_samples=1, device="cpu")
    # against the first control: it and the four SLA trials (the second control is a repeat)
    assert len(result["trials"]) == 5 and result["trials"][0]["sla"] is None
    sla_trials = result["trials"][1:]
    assert [t["sla"] is not None for t in sla_trials] == [True] * 4
    for trial in sla_trials:
        assert trial["psnr_vs_control_db"] > 0 and trial["sla_calls"] > 0
    assert "train.lr=0.0003" in format_comparison(result)
