"""A sweep on a real two-node Ray cluster of this machine (tests/ray_nodes.py: a head with 1 CPU,
a worker node with 2 CPUs and the custom resource trial_node), joined with --address, token
authentication on. The trials ask for trial_node (resources.custom_per_worker), so their Ray
Train workers run on the worker node only; each trial's Tune actor and Train controller run on
the head (sla-sweep pins them there), so the node's death takes only Train workers.

One `sla-sweep run` in a subprocess: two identical trials (topk 0.25, search.num_samples 2, one
at a time, 8 steps, a checkpoint every 2, failure.max_failures 1). When the first trial's step-2
checkpoint is registered, the worker node dies (every process of it SIGKILLed) and a new worker
node with the same resource joins: Ray Train restarts the trial's workers there, from its last
checkpoint; the trial ends with the same weights and metrics, bit for bit, as its twin, which ran
uninterrupted on the new node (the same code path: CPU, one thread per worker). Storage is a
bucket on a real S3-compatible server on 127.0.0.1 (tests/s3_server.py, moto): every
checkpoint is read back from it. MLflow is a real `mlflow server` on 127.0.0.1
(tests/mlflow_server.py), the multi-node setting: every trial's run is there, finished.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.storage import Location, download_dir
from tests.mlflow_server import MlflowServer
from tests.orchestrator.sweep.processes import (
    assert_resumed_after,
    assert_same_weights,
    quality,
    trial_names,
    wait_for_first_checkpoint,
)
from tests.paths import REPO
from tests.ray_nodes import HEAD_IP, TRIAL_RESOURCE, two_nodes  # noqa: F401 (fixture)
from tests.s3_server import s3  # noqa: F401 (fixture)

SMOKE = REPO / "experiments" / "smoke.yaml"
STEPS = 8  # room between the step-2 checkpoint seen in the bucket and the end
pytestmark = pytest.mark.slow


def placements(dashboard: str) -> dict[str, list[str]]:
    """Node IP -> Ray actor class names of every actor this cluster ran, dead ones included."""
    from ray.util.state import list_actors, list_nodes

    ips = {n.node_id: n.node_ip for n in list_nodes(address=dashboard)}
    out: dict[str, list[str]] = {}
    for actor in list_actors(address=dashboard, limit=10_000):
        out.setdefault(ips.get(actor.node_id, "?"), []).append(actor.class_name)
    return out


def train_workers_on(where: dict[str, list[str]]) -> dict[str, int]:
    return {ip: sum("RayTrainWorker" in c for c in cls) for ip, cls in where.items()}


@pytest.fixture(scope="module")
def node_killed_sweep(s3, two_nodes, base_cache, tmp_path_factory):  # noqa: F811
    cwd = tmp_path_factory.mktemp("two_nodes")
    with MlflowServer(cwd / "mlflow-server") as server:
        yield run_and_kill_a_node(s3, two_nodes, base_cache, cwd, server.url)


def run_and_kill_a_node(s3, two_nodes, base_cache, cwd: Path, tracking_uri: str) -> dict:  # noqa: F811
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(SMOKE),
           "--address", two_nodes.address, "--set", "name=two_nodes",
           "--set", "sla.topk={grid: [0.25]}", "--set", "control=false",
           "--set", "search.num_samples=2", "--set", "max_concurrent_trials=1",
           "--set", "failure.max_failures=1", "--set", f"train.steps={STEPS}",
           "--set", "checkpoint.num_to_keep=8", "--set", f"train.base_cache_dir={base_cache}",
           "--set", f"resources.custom_per_worker.{TRIAL_RESOURCE}=1",
           "--set", f"storage.results_dir={s3.uri('two_nodes')}",
           "--set", f"storage.tracking_uri={tracking_uri}"]  # fmt: skip
    env = {**os.environ, **s3.job_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    facts: dict = {"killed_ip": two_nodes.worker.ip, "tracking_uri": tracking_uri}
    try:
        sweep, first = wait_for_first_checkpoint(lines)
        facts["before_kill"] = placements(two_nodes.dashboard)
        two_nodes.kill_worker()
        facts.update(first=first, kill_time=time.time())
        facts["new_ip"] = two_nodes.start_worker().ip
        proc.wait(timeout=600)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    facts.update(sweep=sweep, out="".join(lines), rc=proc.returncode, cwd=cwd,
                 after=placements(two_nodes.dashboard), nodes=two_nodes,
                 rows=sweep.join("trials.json").read_json())  # fmt: skip
    return facts


def test_the_sweep_completes_on_the_two_nodes(node_killed_sweep):
    assert node_killed_sweep["rc"] == 0, node_killed_sweep["out"][-4000:]
    rows = node_killed_sweep["rows"]  # the sweep's record, in the bucket
    assert [r["status"] for r in rows] == ["TERMINATED", "TERMINATED"], rows
    # every checkpoint Ray Train registered is in the bucket, none on the driver's disk
    sweep = node_killed_sweep["sweep"]
    for trial in trial_names(sweep):
        for name in registered_names(sweep.join("train", trial)):
            assert sweep.join("train", trial, name, "trial.json").is_file(), (trial, name)
    assert not list(node_killed_sweep["cwd"].rglob("checkpoint_*"))


def test_every_trial_is_a_finished_run_on_the_tracking_server(node_killed_sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=node_killed_sweep["tracking_uri"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "two_nodes"]
    runs = client.search_runs([experiment.experiment_id])
    by_trial = {r.data.tags.get("sla_sweep.trial_id"): r for r in runs}
    rows = node_killed_sweep["rows"]
    assert {r["trial_id"] for r in rows} <= set(by_trial), sorted(by_trial)
    for row in rows:
        run = by_trial[row["trial_id"]]
        assert run.info.status == "FINISHED", row["trial_id"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(set(steps)) == list(range(1, STEPS + 1)), (row["trial_id"], steps)


def registered_names(trial: Location) -> list[str]:
    snapshot = trial.join("checkpoint_manager_snapshot.json").read_json()
    return [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]


def test_trials_train_only_on_nodes_with_the_trial_resource(node_killed_sweep):
    killed, new = node_killed_sweep["killed_ip"], node_killed_sweep["new_ip"]
    before = train_workers_on(node_killed_sweep["before_kill"])
    after = train_workers_on(node_killed_sweep["after"])
    assert before == {**dict.fromkeys(before, 0), killed: 1}, node_killed_sweep["before_kill"]
    # every trial's Tune actor (ImplicitFunc) and Train controller, on the head only
    for where in (node_killed_sweep["before_kill"], node_killed_sweep["after"]):
        for ip, classes in where.items():
            coordinating = {"ImplicitFunc", "TrainController"} & set(classes)
            assert ip == HEAD_IP or not coordinating, (ip, classes)
        assert {"ImplicitFunc", "TrainController"} <= set(where[HEAD_IP]), where
    # the first trial's restarted worker and its twin's, on the new node; none on the head
    assert after.get(killed) == 1 and after.get(new) == 2, node_killed_sweep["after"]
    assert after.get(HEAD_IP, 0) == 0


def test_the_trial_resumes_from_its_last_checkpoint_on_the_new_node(node_killed_sweep):
    first, kill_time = node_killed_sweep["first"], node_killed_sweep["kill_time"]
    trial = node_killed_sweep["sweep"].join("train", first)
    assert_resumed_after(trial, kill_time, node_killed_sweep["out"], STEPS)


def final_checkpoint(sweep: Location, trial: str, into: Path) -> Path:
    """The trial's checkpoint at the last step, fetched from the bucket into `into`."""
    for name in reversed(registered_names(sweep.join("train", trial))):
        folder = sweep.join("train", trial, name)
        if folder.join("trial.json").read_json()["step"] == STEPS:
            assert download_dir(folder, into) > 3
            return into
    raise AssertionError(f"{trial}: no checkpoint at step {STEPS}")


def test_the_resumed_trial_equals_its_uninterrupted_twin(node_killed_sweep, tmp_path):
    sweep, first = node_killed_sweep["sweep"], node_killed_sweep["first"]
    rows = {r["trial_id"]: r for r in node_killed_sweep["rows"]}
    (twin,) = [t for t in rows if t != first]
    a = final_checkpoint(sweep, first, tmp_path / "a")
    b = final_checkpoint(sweep, twin, tmp_path / "b")
    assert_same_weights(a, b)
    final_a, final_b = quality(rows[first]["metrics"]), quality(rows[twin]["metrics"])
    assert "val/loss" in final_a and final_a == final_b


def test_the_token_is_in_no_log_file_or_record(node_killed_sweep):
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip().encode()
    assert token not in node_killed_sweep["out"].encode()
    roots = [node_killed_sweep["cwd"], node_killed_sweep["nodes"].root]  # MLflow store, Ray logs
    files = [p for root in roots for p in Path(root).rglob("*")
             if p.is_file() and not p.is_symlink()]  # fmt: skip
    assert len(files) > 50, files  # the Ray nodes' logs and the MLflow store were looked at
    assert not [p for p in files if token in p.read_bytes()]
    sweep = node_killed_sweep["sweep"]  # the sweep's files and checkpoints, in the bucket
    objects = sweep.files()
    assert len(objects) > 20, objects
    assert not [o.path for o in objects if token in sweep.with_path(o.path).read_bytes()]
