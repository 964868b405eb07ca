"""An interrupted sweep (Ctrl-C after its first trial finished) resumes and completes, without
rerunning the finished trial and without duplicate MLflow runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.sweep.run import resume_sweep
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"

pytestmark = pytest.mark.slow


def test_interrupted_sweep_resumes_and_completes(ray_cluster, base_cache, tmp_path, capsys):
    cmd = [
        sys.executable, "-m", "orchestrator.cli", "run", str(SMOKE), "--address", ray_cluster,
        "--set", "name=smoke_resume", "--set", "sla.topk={grid: [0.25]}",
        "--set", "max_concurrent_trials=1", "--set", f"train.base_cache_dir={base_cache}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines, finished = [], None
    deadline = time.monotonic() + 480  # generous: CI machines are shared
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"trial (\S+) finished", line)
            if m and finished is None:
                finished = m.group(1)
                proc.send_signal(signal.SIGINT)  # what Ctrl-C does
            assert time.monotonic() < deadline, "".join(lines)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert finished is not None, out
    assert proc.returncode == 130, out
    m = re.search(r"interrupted; finish it with: sla-sweep resume (\S+)", out)
    assert m, out
    sweep_dir = Path(m.group(1))
    before = {r["trial_id"]: r for r in json.loads((sweep_dir / "trials.json").read_text())}
    assert before[finished]["status"] == "TERMINATED"
    unfinished = [t for t, r in before.items() if r["status"] != "TERMINATED"]
    finished_ckpts = {p: p.stat().st_mtime_ns for p in (sweep_dir / "train" / finished).rglob("*")}

    capsys.readouterr()
    outcome = resume_sweep(sweep_dir)
    resumed_out = capsys.readouterr().out

    assert outcome.complete, resumed_out
    assert len(outcome.rows) == 2
    assert all(r.status == "TERMINATED" for r in outcome.rows), [r.error for r in outcome.rows]
    assert f"trial {finished} started" not in resumed_out, "a finished trial ran again"
    assert f"trial {finished} step" not in resumed_out
    for trial_id in unfinished:
        assert f"trial {trial_id} finished" in resumed_out
    control = next(r for r in outcome.rows if r.sla is None)
    assert control.step == 4 and "val/loss" in control.metrics
    after = {p: p.stat().st_mtime_ns for p in (sweep_dir / "train" / finished).rglob("*")}
    assert after == finished_ckpts, "the finished trial's checkpoints were not touched"

    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert sorted(c.data.tags["sla_sweep.trial_id"] for c in children) == sorted(
        r.trial_id for r in outcome.rows
    ), "exactly one child run per trial"
    for child in children:
        assert child.info.status == "FINISHED"
        trial_id = child.data.tags["sla_sweep.trial_id"]
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "train/loss"))
        if trial_id == finished:
            assert steps == [1, 2, 3, 4]
        else:  # an interrupted trial continues from its last checkpoint: every step is there
            assert sorted(set(steps)) == [1, 2, 3, 4], steps
