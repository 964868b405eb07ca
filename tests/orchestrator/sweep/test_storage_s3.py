"""A sweep whose storage.results_dir is a bucket on a real S3-compatible server (moto's, on
127.0.0.1: tests/s3_server.py), on the session's Ray cluster, with an explicit sqlite MLflow
store. One sweep (topk 0.25 + the control, one trial at a time, 6 steps, a checkpoint every 2,
failure.max_failures 1) by `sla-sweep run` in a subprocess:

1. once the first trial's step-2 checkpoint is registered, its Ray Train worker process is
   SIGKILLed (what the kernel's OOM killer does): Ray Train restarts the worker group, which
   continues from that checkpoint (step 0 not evaluated again). Bit-for-bit equality with an
   uninterrupted twin after such a restart is test_two_nodes.py's (a whole node killed there);
2. once that trial has finished the driver is SIGKILLed; `sla-sweep resume s3://...`
   completes the sweep without running the finished trial again, and the MLflow store has
   exactly one child run per trial, each FINISHED with every train/loss step;
3. while the resumed trial checkpoints, the server refuses its checkpoint writes (503 SlowDown)
   for 20 s after its first checkpoint, longer than the S3 client's own retries: that
   checkpoint stays intact in the bucket, the refused one never becomes complete, and Ray
   Train restarts the trial from the intact one (failure.max_failures 1) to the end;
4. every checkpoint trials.json names is in the bucket (listed with boto3); `best` and `infer`
   run from the bucket URI, the checkpoint fetched into the local content-keyed cache.
"""

from __future__ import annotations

import json
import re
import signal
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main as cli_main
from orchestrator.report.study import trial_history
from orchestrator.storage import open_location
from orchestrator.storage.sweep_place import working_copy
from tests.orchestrator.sweep.processes import (
    assert_resumed_after,
    cli,
    reader,
    train_workers,
    wait_for,
    wait_for_first_checkpoint,
)
from tests.paths import REPO
from tests.s3_server import s3  # noqa: F401 (the module's S3 server fixture)

SMOKE = REPO / "experiments" / "smoke.yaml"
PREFIX = "runs"
REFUSE_S = 20
STEPS = 6

pytestmark = pytest.mark.slow


def checkpoints(server, trial_prefix: str) -> dict[str, dict[str, str]]:
    """checkpoint folder -> {key: etag} of a trial's checkpoints that have their trial.json."""
    found: dict[str, dict[str, str]] = {}
    for key, etag in server.etags(trial_prefix).items():
        folder = key[len(trial_prefix) :].split("/", 1)[0]
        if folder.startswith("checkpoint_"):
            found.setdefault(folder, {})[key] = etag
    return {f: keys for f, keys in found.items() if any(k.endswith("/trial.json") for k in keys)}


@pytest.fixture(scope="module")
def bucket_sweep(s3, ray_cluster, base_cache, tmp_path_factory):  # noqa: F811
    cwd = tmp_path_factory.mktemp("s3_sweep")
    proc = cli("run", str(SMOKE), "--address", ray_cluster, "--set", "name=s3_sweep",
               "--set", "sla.topk={grid: [0.25]}", "--set", "max_concurrent_trials=1",
               "--set", "failure.max_failures=1", "--set", "checkpoint.num_to_keep=8",
               "--set", f"train.steps={STEPS}", "--set", f"storage.results_dir={s3.uri(PREFIX)}",
               "--set", f"storage.tracking_uri=sqlite:///{cwd / 'mlflow.db'}",
               "--set", f"train.base_cache_dir={base_cache}", cwd=cwd, env=s3.job_env())  # fmt: skip
    lines: list[str] = []
    reader(proc, lines)
    facts: dict = {}
    try:
        _, killed = wait_for_first_checkpoint(lines)
        (worker,) = train_workers()  # one trial at a time, one worker each
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        facts.update(killed=killed, killed_pid=worker.pid, kill_time=time.time())
        facts["new_pid"] = wait_for(lambda: [p.pid for p in train_workers() if p.pid != worker.pid],
                                    "Ray Train to restart the worker", lines)[0]  # fmt: skip
        found = wait_for(lambda: [re.search(r"trial (\S+) finished", ln) for ln in lines
                                  if " finished" in ln], "the first trial to finish", lines)  # fmt: skip
        finished = found[0].group(1)
        sweep_key = re.search(r"\[sla-sweep\] sweep s3://[^/]+/(\S+)", "".join(lines)).group(1)

        def recorded() -> bool:  # the driver uploads trials.json just after it says "finished"
            rows = json.loads(s3_text(s3, f"{sweep_key}/trials.json"))
            return any(r["trial_id"] == finished and r["status"] == "TERMINATED" for r in rows)

        wait_for(recorded, "trials.json in the bucket to have the finished trial", lines, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_out = "".join(lines)
    uri = s3.uri(sweep_key)
    wait_for(lambda: not train_workers(), "Ray to end the killed driver's trial", lines, 120)
    finished_ckpts = s3.etags(f"{sweep_key}/train/{finished}/")

    # the other trial (Tune numbers a grid's trials <experiment>_00000, _00001): its checkpoint
    # writes refused after its first checkpoint, for REFUSE_S seconds
    experiment, index = finished.rsplit("_", 1)
    retried = f"{experiment}_{1 - int(index):05d}"
    # (checkpoint_2...: its timestamped checkpoint folders, not the controller's snapshot file);
    # 20 s: longer than the S3 client's own retries of a refused request
    s3.refuse_writes(f"{sweep_key}/train/{retried}/checkpoint_2", keep_first=1, for_s=REFUSE_S)
    lines = []
    resume = cli("resume", uri, "--address", ray_cluster, cwd=cwd, env=s3.job_env())
    thread = reader(resume, lines)
    resume.wait(timeout=480)
    thread.join(timeout=30)
    (cwd / "resume.log").write_text("".join(lines))  # for reading after a failure
    return {**facts, "uri": uri, "key": sweep_key, "finished": finished, "retried": retried,
            "finished_ckpts": finished_ckpts, "run_out": run_out, "cwd": cwd,
            "resume_out": "".join(lines), "resume_rc": resume.returncode}  # fmt: skip


def s3_text(s3, key: str) -> str:  # noqa: F811
    from orchestrator.storage import open_location

    return open_location(s3.uri(key)).read_text()


def test_resume_from_the_uri_completes_without_rerun(bucket_sweep, s3):  # noqa: F811
    out, finished = bucket_sweep["resume_out"], bucket_sweep["finished"]
    assert bucket_sweep["resume_rc"] == 0, out
    rows = json.loads(s3_text(s3, f"{bucket_sweep['key']}/trials.json"))
    assert len(rows) == 2 and all(r["status"] == "TERMINATED" for r in rows), rows
    assert all(r["step"] == STEPS for r in rows), rows
    assert f"trial {finished} started" not in out, "a finished trial ran again"
    assert f"trial {bucket_sweep['retried']} finished" in out
    after = s3.etags(f"{bucket_sweep['key']}/train/{finished}/")
    assert after == bucket_sweep["finished_ckpts"], "the finished trial's checkpoints changed"


def test_a_killed_worker_restarts_from_its_last_checkpoint(bucket_sweep, s3):  # noqa: F811
    killed, kill_time = bucket_sweep["killed"], bucket_sweep["kill_time"]
    assert killed == bucket_sweep["finished"]  # one trial at a time: the first to start
    assert bucket_sweep["new_pid"] != bucket_sweep["killed_pid"]
    trial = open_location(bucket_sweep["uri"]).join("train", killed)
    assert_resumed_after(trial, kill_time, bucket_sweep["run_out"], STEPS)


def test_mlflow_has_one_finished_child_run_per_trial(bucket_sweep, s3):  # noqa: F811
    meta = json.loads(s3_text(s3, f"{bucket_sweep['key']}/sweep.json"))
    client = MlflowClient(tracking_uri=meta["tracking_uri"])
    parent = client.get_run(meta["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")  # fmt: skip
    rows = json.loads(s3_text(s3, f"{bucket_sweep['key']}/trials.json"))
    assert sorted(c.data.tags["sla_sweep.trial_id"] for c in children) == sorted(
        r["trial_id"] for r in rows
    )
    for child in children:  # the restarted and the retried trial's replayed steps included
        assert child.info.status == "FINISHED"
        steps = {m.step for m in client.get_metric_history(child.info.run_id, "train/loss")}
        assert steps == set(range(1, STEPS + 1)), steps


def test_the_report_reads_every_trial_s_losses_from_the_bucket(bucket_sweep, s3):  # noqa: F811
    # Tune's result.json files live in the bucket only; the report's loss curves read them from
    # the driver's working copy (they were empty there before the driver fetched them)
    local = working_copy(open_location(bucket_sweep["uri"]))
    rows = json.loads(s3_text(s3, f"{bucket_sweep['key']}/trials.json"))
    for row in rows:
        history = trial_history(local, row["trial_id"])
        assert [s for s, _ in history["val/loss"]][-1] == STEPS, (row["trial_id"], history)
        assert [s for s, _ in history["train/loss"]] == list(range(1, STEPS + 1))


def test_refused_writes_keep_the_last_checkpoint_and_retry(bucket_sweep, s3):  # noqa: F811
    key, retried = bucket_sweep["key"], bucket_sweep["retried"]
    assert s3.refused, "the server refused no write: the fault did not happen"
    assert all(f"/train/{retried}/checkpoint_" in k for k in s3.refused), s3.refused
    kept = checkpoints(s3, f"{key}/train/{retried}/")
    first = min(kept)  # the checkpoint written before the refusals (timestamped names sort)
    refused_folders = {k.split(f"/train/{retried}/", 1)[1].split("/", 1)[0] for k in s3.refused}
    assert refused_folders and all(f.startswith("checkpoint_") for f in refused_folders)
    assert first not in refused_folders
    # Either a refused checkpoint never became complete (no trial.json): Ray Train failed the
    # attempt and restarted the trial from `first`, which wrote the later ones; or, on a slow
    # machine, the S3 client was still retrying the refused upload when the refusals ended and
    # finished it: then that checkpoint is whole. Never a half-written one among the kept.
    late = refused_folders & set(kept)
    for folder in late:
        assert {k.rsplit("/", 1)[1] for k in kept[folder]} >= {"trial.json", "model.safetensors"}
    again = re.findall(rf"trial {retried} step 3 ", bucket_sweep["resume_out"])
    if not late:
        assert len(again) == 2, bucket_sweep["resume_out"]  # the restarted attempt's step 3
    assert {k.rsplit("/", 1)[1] for k in kept[first]} >= {"trial.json", "model.safetensors"}
    steps = [json.loads(s3_text(s3, k))["step"] for f in sorted(kept) for k in kept[f]
             if k.endswith("/trial.json")]  # fmt: skip
    assert steps[0] == 2 and steps[-1] == STEPS, steps  # retried from step 2 to the end


def test_every_checkpoint_is_in_the_bucket(bucket_sweep, s3):  # noqa: F811
    key = bucket_sweep["key"]
    keys = set(s3.keys(key + "/"))
    rows = json.loads(s3_text(s3, f"{key}/trials.json"))
    for row in rows:
        recorded = row["checkpoint"].removeprefix(f"{s3.bucket}/")
        assert f"{recorded}/trial.json" in keys, (recorded, sorted(keys))
        assert f"{recorded}/model.safetensors" in keys
        if row["sla"] is not None:
            assert f"{recorded}/sla_attention.pt" in keys
    for name in ("spec.yaml", "sweep.json", "results.csv", "report/report.md", "tune/tuner.pkl"):
        assert f"{key}/{name}" in keys, name
    base = [k for k in s3.keys(f"{PREFIX}/_cache/base_models/") if k.endswith("config.json")]
    assert base, "the pre-trained base was not uploaded"
    sweep_json = s3_text(s3, f"{key}/sweep.json")
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in sweep_json  # no credential in the sweep's files


def test_best_and_infer_from_the_uri(bucket_sweep, s3, capsys, tmp_path):  # noqa: F811
    uri = bucket_sweep["uri"]
    assert cli_main(["best", uri]) == 0
    out = capsys.readouterr().out
    assert f"sweep {uri}" in out and f"checkpoint: s3://{s3.bucket}/" in out, out
    samples = tmp_path / "samples"
    code = cli_main(["infer", uri, "--num-samples", "1", "--device", "cpu", "--out", str(samples),
                     "--no-mlflow"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert (samples / "samples.json").is_file()
    summary = json.loads((samples / "samples.json").read_text())
    assert summary["source"]["step"] == STEPS


def test_export_and_compare_from_the_uri(bucket_sweep, s3, tmp_path, capsys):  # noqa: F811
    uri = bucket_sweep["uri"]
    out = tmp_path / "export"
    assert cli_main(["export", uri, str(out)]) == 0, capsys.readouterr()
    assert (out / "sla_attention.pt").is_file() and (out / "inference.json").is_file()
    compared = tmp_path / "compare.json"
    code = cli_main(["compare", uri, "--num-samples", "1", "--device", "cpu",
                     "--out", str(compared)])  # fmt: skip
    assert code == 0, capsys.readouterr()
    trials = json.loads(compared.read_text())["trials"]
    assert len(trials) == 2 and trials[0]["sla"] is None  # the control first, then topk 0.25
