"""What schedulers and users do to a running sweep, with real processes and real signals on the
session's real Ray cluster and a real MLflow store. One sweep (an SLA trial and the control, one
at a time), driven by `sla-sweep` subprocesses:

1. `sla-sweep run`; once its first trial has finished, a second driver (`sla-sweep resume DIR`)
   is refused in one line while the first is alive;
2. when the second trial is past its step-2 checkpoint, the driver gets SIGTERM (what timeout,
   batch schedulers, systemd and Kubernetes send): Tune's state saved, the resume command
   printed, exit 143, no MLflow run left RUNNING;
3. `sla-sweep resume DIR` gets Ctrl-C twice: the resume command printed again, exit 130,
   nothing RUNNING;
4. Tune's experiment state is made older than the sweep's record (the finished trial unfinished
   there, its last result without val/loss: what a SIGKILL between Tune's periodic saves leaves),
   and `sla-sweep resume DIR` completes: the finished trial is not run again, every MLflow run is
   FINISHED, and no metric history holds a step twice although the second trial replayed the
   steps after its checkpoint.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.orchestrator.sweep.processes import cli, wait_for
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"
RESUME_LINE = re.compile(r"interrupted; finish it with: sla-sweep resume (\S+)")

pytestmark = pytest.mark.slow


class Driver:
    """A `sla-sweep` subprocess whose merged output is read as it comes."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = cli(*args, cwd=cwd)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def seen(self, pattern: str) -> re.Match | None:
        return next((m for ln in list(self.lines) if (m := re.search(pattern, ln))), None)

    def wait(self, pattern: str, what: str, timeout_s: float = 420) -> re.Match:
        return wait_for(lambda: self.seen(pattern), what, self.lines, timeout_s)

    def end(self, timeout_s: float = 180) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.reader.join(timeout=30)
        return self.proc.returncode, "".join(self.lines)


def running_runs(tracking_uri: str, experiment: str) -> list[str]:
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [f"{r.info.run_name} {r.info.status}" for r in runs if r.info.status == "RUNNING"]


def make_tune_state_stale(sweep_dir: Path, trial_id: str) -> None:
    """Tune's latest experiment state, rewritten as a periodic save taken mid-trial would have it:
    the trial unfinished, its last result a train-only step (no val/loss)."""
    state_file = sorted((sweep_dir / "tune").glob("experiment_state-*.json"))[-1]
    state = json.loads(state_file.read_text())
    for entry in state["trial_data"]:
        trial, run = json.loads(entry[0]), json.loads(entry[1])
        if trial["trial_id"] != trial_id:
            continue
        trial["status"] = "RUNNING"
        last = run["last_result"]
        run["last_result"] = {k: v for k, v in last.items() if not k.startswith(("val/", "flops/"))}
        run["last_result"]["step"] = 3
        entry[0], entry[1] = json.dumps(trial), json.dumps(run)
    state_file.write_text(json.dumps(state))


@pytest.fixture(scope="module")
def stopped_sweep(ray_cluster, base_cache, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("signals_sweep")
    run = Driver("run", str(SMOKE), "--address", ray_cluster, "--set", "name=faults_signals",
                 "--set", "sla.topk={grid: [0.25]}", "--set", "max_concurrent_trials=1",
                 "--set", f"train.base_cache_dir={base_cache}", cwd=cwd)  # fmt: skip
    facts: dict = {"cwd": cwd}
    try:
        sweep_dir = Path(run.wait(r"\[sla-sweep\] sweep (\S+)", "the sweep directory").group(1))
        first = run.wait(r"trial (\S+) finished", "the first trial to finish").group(1)
        t = time.monotonic()
        second = cli("resume", str(sweep_dir), "--address", ray_cluster, cwd=cwd)
        facts["second_out"], _ = second.communicate(timeout=120)
        facts.update(second_rc=second.returncode, second_s=time.monotonic() - t)
        other = run.wait(rf"trial (?!{first})(\S+) step 3 ", "the second trial past step 2")
        run.proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        facts["run_rc"], facts["run_out"] = run.end()
        facts["sigterm_s"] = time.monotonic() - t
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    facts.update(sweep_dir=sweep_dir, first=first, second=other.group(1), meta=meta)
    facts["running_after_run"] = running_runs(meta["tracking_uri"], "faults_signals")
    facts["first_files"] = {p: p.stat().st_mtime_ns for p in (sweep_dir / "train" / first).rglob("*")}  # fmt: skip

    resume = Driver("resume", str(sweep_dir), "--address", ray_cluster, cwd=cwd)
    try:
        resume.wait(rf"trial {facts['second']} started", "the resumed trial to start")
        resume.proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        resume.proc.send_signal(signal.SIGINT)  # Ctrl-C pressed twice
        facts["twice_rc"], facts["twice_out"] = resume.end()
    finally:
        if resume.proc.poll() is None:
            resume.proc.kill()
    facts["running_after_twice"] = running_runs(meta["tracking_uri"], "faults_signals")

    make_tune_state_stale(sweep_dir, first)
    final = cli("resume", str(sweep_dir), "--address", ray_cluster, cwd=cwd)
    facts["final_out"], _ = final.communicate(timeout=420)
    facts["final_rc"] = final.returncode
    return facts


def test_a_second_driver_is_refused_in_one_line(stopped_sweep):
    out = stopped_sweep["second_out"]
    assert stopped_sweep["second_rc"] == 2, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and "another sla-sweep driver (pid " in lines[0], out
    assert stopped_sweep["second_s"] < 60, stopped_sweep["second_s"]
    assert f"trial {stopped_sweep['first']} finished" not in stopped_sweep["final_out"]


def test_sigterm_saves_state_and_prints_the_resume_command(stopped_sweep):
    out = stopped_sweep["run_out"]
    assert stopped_sweep["run_rc"] == 143, out[-3000:]
    assert "SIGTERM received" not in out and "*** " not in out, out[-3000:]
    m = RESUME_LINE.search(out)
    assert m and Path(m.group(1)) == stopped_sweep["sweep_dir"], out[-3000:]
    assert stopped_sweep["running_after_run"] == [], "MLflow runs left RUNNING after SIGTERM"


def test_ctrl_c_twice_prints_the_resume_command(stopped_sweep):
    out = stopped_sweep["twice_out"]
    assert stopped_sweep["twice_rc"] == 130, out[-3000:]
    assert RESUME_LINE.search(out), out[-3000:]
    assert stopped_sweep["running_after_twice"] == [], "MLflow runs left RUNNING after Ctrl-C x2"


def test_resume_completes_without_running_a_trial_twice(stopped_sweep):
    f = stopped_sweep
    out, first, second = f["final_out"], f["first"], f["second"]
    assert f["final_rc"] == 0, out[-4000:]
    for phase in ("twice_out", "final_out"):
        assert f"trial {first} started" not in f[phase] and f"trial {first} step" not in f[phase]
    assert f"trial {second} finished" in out
    rows = json.loads((f["sweep_dir"] / "trials.json").read_text())
    assert sorted(r["status"] for r in rows) == ["TERMINATED", "TERMINATED"], rows
    after = {p: p.stat().st_mtime_ns for p in (f["sweep_dir"] / "train" / first).rglob("*")}
    assert after == f["first_files"], "the finished trial's files changed on resume"


def test_no_run_left_running_and_no_step_logged_twice(stopped_sweep):
    meta = stopped_sweep["meta"]
    client = MlflowClient(tracking_uri=meta["tracking_uri"])
    parent = client.get_run(meta["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")  # fmt: skip
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED", child.info
        for key in ("train/loss", "val/loss"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == sorted(set(steps)), f"{key} logged a step twice: {steps}"
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "train/loss"))
        assert steps == [1, 2, 3, 4], steps
