"""Processes killed with SIGKILL, on the session's real Ray cluster, with a real MLflow store.

One sweep of two identical trials (topk 0.25, grid repeated twice, one at a time, 6 steps,
a checkpoint every 2, failure.max_failures 1), run by `sla-sweep run` in a subprocess:

1. while the first trial trains past its step-2 checkpoint, its Ray Train worker process is
   SIGKILLed: Ray Train restarts the worker group, which continues from the last reported
   checkpoint; the trial's SLA weights and final metrics equal its twin's, which ran
   uninterrupted (CPU, one thread per worker: deterministic);
2. when the first trial has finished, the sweep driver itself is SIGKILLed: `sla-sweep resume`
   completes the sweep, the finished trial does not run again, and MLflow has exactly one
   child run per trial.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from sla_kernel_glue import read_sla_state
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"
STEPS = 6

pytestmark = pytest.mark.slow


def train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of THIS session's cluster (its raylet is our child), never
    those of another cluster on the host."""
    found = []
    for raylet in (p for p in psutil.Process().children(recursive=True) if _name(p) == "raylet"):
        for p in raylet.children(recursive=True):
            try:
                if "RayTrainWorker" in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:  # exited (or a zombie) while we looked: not a live worker
                continue
    return found


def _name(p: psutil.Process) -> str:
    """The process name, or "" for one that exited while the tree was being read."""
    try:
        return p.name()
    except psutil.Error:
        return ""


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def registered(trial_dir: Path) -> list[tuple[float, int]]:
    """(report time, step) of each checkpoint Ray Train has registered for a trial (its snapshot)."""
    try:
        snapshot = json.loads((trial_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    out = []
    for c in snapshot["checkpoint_results"]:
        stamp = c["checkpoint_dir_name"].removeprefix("checkpoint_")
        when = datetime.datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S.%f").timestamp()
        out.append((when, int(c["metrics"]["step"])))
    return sorted(out)


def wait_for(predicate, what: str, lines: list[str], timeout_s: float = 420):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n" + "".join(lines))


@pytest.fixture(scope="module")
def killed_sweep(ray_cluster, base_cache, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("kill_sweep")
    proc = cli("run", str(SMOKE), "--address", ray_cluster,
               "--set", "name=faults_kill", "--set", "sla.topk={grid: [0.25]}",
               "--set", "control=false", "--set", "search.num_samples=2",
               "--set", "max_concurrent_trials=1", "--set", "failure.max_failures=1",
               "--set", f"train.steps={STEPS}", "--set", "checkpoint.num_to_keep=8",
               "--set", f"train.base_cache_dir={base_cache}", cwd=cwd)  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    facts = {}
    try:
        found = wait_for(lambda: [re.search(r"\[sla-sweep\] sweep (\S+)", ln) for ln in lines if "] sweep " in ln],
                         "the sweep directory", lines)  # fmt: skip
        sweep_dir = Path(found[0].group(1))

        def first_checkpointed():  # the first trial, once Ray Train registered its step-2 checkpoint
            trials = (
                sorted((sweep_dir / "train").glob("*/")) if (sweep_dir / "train").is_dir() else []
            )
            return trials and any(step >= 2 for _, step in registered(trials[0])) and trials[0]

        trial_dir = wait_for(first_checkpointed, "the first trial's step-2 checkpoint", lines)
        (worker,) = train_workers()  # one trial at a time, one worker each
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        facts.update(first=trial_dir.name, killed_pid=worker.pid, kill_time=time.time())
        facts["new_pid"] = wait_for(lambda: [p.pid for p in train_workers() if p.pid != worker.pid],
                                    "Ray Train to restart the worker", lines)[0]  # fmt: skip
        wait_for(lambda: any(f"trial {facts['first']} finished" in ln for ln in lines),
                 "the first trial to finish", lines)  # fmt: skip
        proc.send_signal(signal.SIGKILL)  # the sweep driver, between its two trials
        proc.wait(timeout=60)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    first = facts["first"]
    before = json.loads((sweep_dir / "trials.json").read_text())
    first_files = {p: p.stat().st_mtime_ns for p in (sweep_dir / "train" / first).rglob("*")}

    wait_for(lambda: not train_workers(), "Ray to end the killed driver's trial", lines, 120)
    resume = cli("resume", str(sweep_dir), "--address", ray_cluster, cwd=cwd)
    resume_out, _ = resume.communicate(timeout=420)
    return {**facts, "sweep_dir": sweep_dir, "run_out": "".join(lines), "before": before,
            "first_files": first_files, "resume_out": resume_out, "resume_rc": resume.returncode}  # fmt: skip


def trial_steps(out: str, trial: str) -> list[int]:
    return [int(s) for s in re.findall(rf"trial {trial} step (\d+)", out)]


def last_checkpoint(sweep_dir: Path, trial: str) -> Path:
    found = sorted((sweep_dir / "train" / trial).glob("checkpoint_*/trial.json"))
    final = [p.parent for p in found if json.loads(p.read_text())["step"] == STEPS]
    assert final, found
    return final[-1]


def test_killed_worker_restarts_from_its_last_checkpoint(killed_sweep):
    first, kill_time = killed_sweep["first"], killed_sweep["kill_time"]
    assert killed_sweep["new_pid"] != killed_sweep["killed_pid"]
    every = 2  # smoke.yaml's checkpoint_every
    checkpoints = registered(killed_sweep["sweep_dir"] / "train" / first)
    before = [step for when, step in checkpoints if when < kill_time]
    after = [step for when, step in checkpoints if when > kill_time]
    assert before and after, checkpoints
    # the restarted attempt's first checkpoint is the next one after the killed attempt's last
    assert max(before) >= 2 and min(after) == max(before) + every, checkpoints
    assert after[-1] == STEPS
    steps = trial_steps(killed_sweep["run_out"], first)
    assert steps.count(0) == 1, f"the restarted attempt evaluated step 0 again: {steps}"
    assert steps[-1] == STEPS


def assert_same_weights(a: Path, b: Path) -> None:
    """Two checkpoints hold the same SLA and model tensors, bit for bit (the same code path ran
    both: CPU, one thread per worker)."""
    sla_a, sla_b = read_sla_state(a / "sla_attention.pt"), read_sla_state(b / "sla_attention.pt")
    assert sla_a["layers"].keys() == sla_b["layers"].keys()
    for layer, entry in sla_a["layers"].items():
        for key, tensor in entry["state"].items():
            assert torch.equal(tensor, sla_b["layers"][layer]["state"][key]), (layer, key)
    model_a, model_b = (
        load_file(str(a / "model.safetensors")),
        load_file(str(b / "model.safetensors")),
    )
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def quality(metrics: dict) -> dict:
    """A trial's metrics without what the machine measured (step times, CPU and memory use),
    which differ between any two runs."""
    return {k: v for k, v in metrics.items() if not k.startswith(("perf/", "system/"))}


def test_restarted_trial_equals_its_uninterrupted_twin(killed_sweep):
    sweep_dir, first = killed_sweep["sweep_dir"], killed_sweep["first"]
    rows = {r["trial_id"]: r for r in json.loads((sweep_dir / "trials.json").read_text())}
    (twin,) = [t for t in rows if t != first]
    a, b = last_checkpoint(sweep_dir, first), last_checkpoint(sweep_dir, twin)
    assert_same_weights(a, b)
    final_a, final_b = quality(rows[first]["metrics"]), quality(rows[twin]["metrics"])
    assert "val/loss" in final_a and final_a == final_b
    # the twin's saved trial.json metrics (at the last step) agree as well
    assert quality(json.loads((a / "trial.json").read_text())["metrics"]) == quality(
        json.loads((b / "trial.json").read_text())["metrics"]
    )


def test_resume_after_driver_kill_completes_without_rerun(killed_sweep):
    sweep_dir, first, out = (
        killed_sweep["sweep_dir"],
        killed_sweep["first"],
        killed_sweep["resume_out"],
    )
    assert killed_sweep["resume_rc"] == 0, out
    assert {r["trial_id"]: r["status"] for r in killed_sweep["before"]}[first] == "TERMINATED"
    assert f"trial {first} started" not in out and f"trial {first} step" not in out, out
    rows = json.loads((sweep_dir / "trials.json").read_text())
    assert len(rows) == 2 and all(r["status"] == "TERMINATED" for r in rows), rows
    assert all(r["step"] == STEPS for r in rows)
    after = {p: p.stat().st_mtime_ns for p in (sweep_dir / "train" / first).rglob("*")}
    assert after == killed_sweep["first_files"], "the finished trial's files changed on resume"


def test_mlflow_has_one_child_run_per_trial(killed_sweep):
    sweep_dir = killed_sweep["sweep_dir"]
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=meta["tracking_uri"])
    parent = client.get_run(meta["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")  # fmt: skip
    trials = sorted(r["trial_id"] for r in json.loads((sweep_dir / "trials.json").read_text()))
    assert sorted(c.data.tags["sla_sweep.trial_id"] for c in children) == trials
    for child in children:
        assert child.info.status == "FINISHED"
        steps = {m.step for m in client.get_metric_history(child.info.run_id, "train/loss")}
        assert steps == set(range(1, STEPS + 1))
