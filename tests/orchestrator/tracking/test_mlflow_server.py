"""MLflow on a real tracking server (`mlflow server` on 127.0.0.1, tests/mlflow_server.py): the
driver's records held through an outage and sent once on reconnect, journaled when the server
stays away, and the credentials of the tracking URI kept out of everything a sweep writes."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking.mlflow_buffer import HTTP_DEFAULTS, JOURNAL, PENDING, MlflowBuffer
from tests.mlflow_server import MlflowServer

SECRET_IN_URI = "uri-secret-7d1f"
SECRET_IN_ENV = "env-secret-93ac"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


@pytest.fixture
def quick_http(monkeypatch):
    """MLflow's HTTP retries as the sweep sets them, restored after the test."""
    for key, value in HTTP_DEFAULTS.items():
        monkeypatch.setenv(key, value)


def _rows(steps, ts=1_000):
    return [[key, float(step) / (i + 2), ts + step, step]
            for step in steps for i, key in enumerate(("train/loss", "val/loss"))]  # fmt: skip


def _child(buffer: MlflowBuffer, experiment_id: str, parent: str, trial: str) -> str:
    find = f"tags.`sla_sweep.trial_id` = '{trial}' and tags.`mlflow.parentRunId` = '{parent}'"
    return buffer.new_run({"experiment_id": experiment_id, "run_name": trial, "trial": trial,
                           "tags": {"sla_sweep.trial_id": trial, "mlflow.parentRunId": parent},
                           "start_time": 1_000, "find": find})  # fmt: skip


@pytest.mark.slow
def test_buffer_holds_records_through_an_outage(server, tmp_path, quick_http):
    """Server stopped: a run made, rows, params and an artifact queued (its file then deleted,
    as a rotated checkpoint's); restarted: each row, param and the artifact there exactly once,
    the outage said in two lines; rows queued again are not sent again."""
    client = MlflowClient(server.url)
    experiment_id = client.create_experiment("buffer-outage")
    parent = client.create_run(experiment_id).info.run_id
    lines: list[str] = []
    buffer = MlflowBuffer(client, name=server.url, sweep_dir=tmp_path, say=lines.append,
                          retry_max_s=1.0)  # fmt: skip
    server.stop()
    run = _child(buffer, experiment_id, parent, "t0")
    assert run.startswith(PENDING)
    buffer.submit({"op": "batch", "run": run, "params": [["sla.topk", "0.25"]]})
    for step in range(4):
        buffer.submit({"op": "batch", "run": run, "metrics": _rows([step])})
    video = tmp_path / "checkpoint" / "grid.png"
    video.parent.mkdir()
    video.write_bytes(b"\x89PNG not really")
    buffer.submit({"op": "artifact", "run": run, "path": str(video), "artifact_path": "validation"})
    video.unlink()  # the checkpoint rotated away before the server came back
    buffer.submit({"op": "end", "run": run, "status": "FINISHED", "end_time": 9_000})
    time.sleep(2.0)
    assert buffer.pending() == (8, 8)
    assert not buffer.flush(0.1)
    server.start()
    assert buffer.flush(60), f"still pending after the restart: {buffer.pending()}"
    buffer.submit({"op": "batch", "run": run, "metrics": _rows([0, 3])})  # reported again
    assert buffer.flush(30)
    run_id = buffer.resolve(run)
    assert not run_id.startswith(PENDING)
    for key in ("train/loss", "val/loss"):
        history = client.get_metric_history(run_id, key)
        assert sorted((m.step, m.value, m.timestamp) for m in history) == sorted(
            (step, value, ts) for k, value, ts, step in _rows(range(4)) if k == key
        )
    got = client.get_run(run_id)
    assert got.data.params == {"sla.topk": "0.25"} and got.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "validation")] == ["validation/grid.png"]
    children = client.search_runs([experiment_id], "tags.`sla_sweep.trial_id` = 't0'")
    assert [r.info.run_id for r in children] == [run_id]
    down = [ln for ln in lines if "unreachable" in ln]
    back = [ln for ln in lines if "answers again" in ln]
    assert len(down) == 1 and len(back) == 1, lines
    assert "8 records held (8 metric rows)" in back[0]
    assert buffer.close(5) and not (tmp_path / JOURNAL).exists()


@pytest.mark.slow
def test_a_server_still_away_at_the_end_leaves_a_journal(server, tmp_path, quick_http):
    """close() with the server away: the records go to the journal with one line saying how to
    send them; the sweep's next buffer sends them once the server answers (a line cut by a kill
    left out, said), then drops the journal. One run was made before the outage (its records
    name it by placeholder), one during it."""
    client = MlflowClient(server.url)
    experiment_id = client.create_experiment("buffer-journal")
    parent = client.create_run(experiment_id).info.run_id
    lines: list[str] = []
    buffer = MlflowBuffer(client, name=server.url, sweep_dir=tmp_path, say=lines.append)
    before = _child(buffer, experiment_id, parent, "t1")
    assert buffer.flush(30)
    server.stop()
    during = _child(buffer, experiment_id, parent, "t2")
    for run in (before, during):
        buffer.submit({"op": "batch", "run": run, "metrics": _rows([1, 2])})
        buffer.submit({"op": "end", "run": run, "status": "FINISHED", "end_time": 9_000})
    buffer.submit({"op": "batch", "run": parent, "tags": [["best_trial", "t1"]]})
    assert not buffer.close(1.0)
    journal = tmp_path / JOURNAL
    assert len(journal.read_text().splitlines()) == 6
    said = [ln for ln in lines if "still unreachable" in ln]
    assert (
        len(said) == 1 and f"sla-sweep resume {tmp_path}" in said[0] and "8 metric rows" in said[0]
    )
    with journal.open("a") as f:
        f.write('{"op": "batch", "run": "cut by a ki')  # a driver killed while writing
    server.start()
    replay = MlflowBuffer(client, name=server.url, sweep_dir=tmp_path, say=lines.append)
    assert lines[-1].endswith("(1 damaged lines left out)"), lines[-1]
    assert replay.flush(60)
    assert not [ln for ln in lines if "MLflow refused" in ln], lines
    ids = [buffer.resolve(before), replay.resolve(during)]
    assert not [i for i in ids if i.startswith(PENDING)]
    for run_id in ids:
        assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]
        assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(parent).data.tags["best_trial"] == "t1"
    assert replay.close(5) and not journal.exists()


@pytest.mark.slow
def test_a_record_the_server_refuses_is_said_and_left_out(server, tmp_path, quick_http):
    """A 4xx answer (a param changed after it was logged) is one line and that record only:
    the records after it are sent."""
    client = MlflowClient(server.url)
    experiment_id = client.create_experiment("buffer-refused")
    run = client.create_run(experiment_id).info.run_id
    lines: list[str] = []
    buffer = MlflowBuffer(client, name=server.url, sweep_dir=tmp_path, say=lines.append)
    buffer.submit({"op": "batch", "run": run, "params": [["sla.topk", "0.25"]]})
    buffer.submit({"op": "batch", "run": run, "params": [["sla.topk", "0.5"]]})
    buffer.submit({"op": "batch", "run": run, "metrics": _rows([0])})
    assert buffer.close(30)
    assert len(lines) == 1 and lines[0].startswith("MLflow refused a batch record"), lines
    assert client.get_run(run).data.params == {"sla.topk": "0.25"}
    assert [m.step for m in client.get_metric_history(run, "val/loss")] == [0]


class Outage(threading.Thread):
    """Stops the server once the sweep's first metric rows are in trials.json, and starts it
    again once three more reports came in (at most 30 s later)."""

    def __init__(self, server: MlflowServer, results: Path) -> None:
        super().__init__(daemon=True)
        self.server, self.results = server, results
        self.held = -1  # reports the driver got while the server was away

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while self._reports() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        at_stop = self._reports()
        self.server.stop()
        stopped = time.monotonic()
        while self._reports() < at_stop + 3 and time.monotonic() - stopped < 30:
            time.sleep(0.2)
        self.held = self._reports() - at_stop
        self.server.start()

    def _reports(self) -> int:
        """A count that grows with every report (trials.json's steps, step 0 counted)."""
        total = 0
        for path in self.results.glob("smoke-*/trials.json"):
            try:
                rows = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            total += sum(int(r.get("step") or 0) + 1 for r in rows if r.get("metrics"))
        return total


@pytest.mark.slow
def test_a_sweep_through_a_server_outage_keeps_every_row_and_no_secret(
    server, ray_cluster, base_cache, tmp_path, monkeypatch, quick_http, capfd
):
    """A 2-trial smoke sweep on the server, given as http://user:password@host:port with
    MLFLOW_TRACKING_PASSWORD set too; the server stopped after the first metric rows and started
    again. The sweep completes; every row Tune got is in MLflow once (against each trial's
    result.json and trials.json), params and the parent's artifacts are there; neither secret is
    in any param, tag, file of the sweep directory or line printed."""
    from orchestrator.report.study import trial_history
    from orchestrator.spec import load_spec
    from orchestrator.storage.records import load_rows
    from orchestrator.sweep.run import run_sweep
    from tests.orchestrator.conftest import SMOKE_SPEC

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET_IN_ENV)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)  # the URI's user is set there
    uri = f"http://sweeper:{SECRET_IN_URI}@127.0.0.1:{server.port}"
    sets = [f"train.base_cache_dir={base_cache}", "sla.topk={grid: [0.5]}",
            f"storage.tracking_uri={uri}"]  # fmt: skip
    spec = load_spec(SMOKE_SPEC, sets, cwd=tmp_path, gpus_available=0)
    outage = Outage(server, tmp_path / "sla_runs")
    outage.start()
    try:
        outcome = run_sweep(spec)
    finally:
        outage.join(timeout=120)
        if server.proc is None:
            server.start()
    out, err = capfd.readouterr()
    print(out[-3000:])
    assert outcome.complete and [r.status for r in outcome.rows] == ["TERMINATED"] * 2
    assert outage.held > 0, "no report came in while the server was away"
    down = [ln for ln in out.splitlines() if "unreachable" in ln]
    back = [ln for ln in out.splitlines() if "answers again" in ln]
    assert len(down) == 1 and len(back) == 1, out
    held_rows = int(back[0].rsplit("(", 1)[1].split()[0])
    assert held_rows > 0, back[0]

    sweep_dir = outcome.sweep_dir
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    assert meta["tracking_uri"] == server.url
    client = MlflowClient(server.url)
    total = 0
    for row in load_rows(sweep_dir).values():
        assert row.run_id and not row.run_id.startswith(PENDING)
        history = trial_history(sweep_dir, row.trial_id)
        assert history and max(s for pts in history.values() for s, _ in pts) == row.step
        for key, points in history.items():
            logged = sorted((m.step, m.value) for m in client.get_metric_history(row.run_id, key))
            assert [s for s, _ in logged] == [s for s, _ in points], key  # each step once
            assert [v for _, v in logged] == pytest.approx([v for _, v in points]), key
            assert points[-1][1] == pytest.approx(row.metrics[key])
            total += len(points)
        run = client.get_run(row.run_id)
        assert run.data.params["trial_id"] == row.trial_id and "sla.topk" in run.data.params
        assert run.info.status == "FINISHED"
    assert total > 0
    parent = client.get_run(meta["parent_run_id"])
    assert parent.data.params["metric"] == "val/loss" and parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(meta["parent_run_id"])}
    assert {"spec.yaml", "results.csv", "pareto.png", "report"} <= artifacts
    assert not (sweep_dir / JOURNAL).exists()
    assert any(ln.startswith("[sla-sweep] registered: models:/smoke/") for ln in out.splitlines())

    runs = client.search_runs([meta["experiment_id"]])
    recorded = [str(x) for r in runs for d in (r.data.params, r.data.tags) for x in d.items()]
    recorded += [str(x) for x in client.get_experiment(meta["experiment_id"]).tags.items()]
    files = [p for p in sweep_dir.rglob("*") if p.is_file()]
    for secret in (SECRET_IN_URI, SECRET_IN_ENV):
        assert secret not in out and secret not in err
        assert not [x for x in recorded if secret in x]
        assert not [p for p in files if secret.encode() in p.read_bytes()]


def test_a_uris_credentials_move_to_the_environment(tmp_path, monkeypatch):
    """user:password@ leaves the URI (storage and spec.yaml's source) for MLflow's variables; a
    variable already set wins; a server nothing answers at is refused without the secret."""
    from orchestrator.spec import SpecError, load_spec
    from orchestrator.sweep.reachable import check_tracking_uri
    from orchestrator.tracking.creds import without_credentials
    from tests.mlflow_server import free_port
    from tests.orchestrator.conftest import SMOKE_SPEC

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET_IN_ENV)
    port = free_port()
    uri = f"http://sweeper:{SECRET_IN_URI}%40x@127.0.0.1:{port}/prefix"
    spec = load_spec(SMOKE_SPEC, [f"storage.tracking_uri={uri}"], cwd=tmp_path, gpus_available=0)
    bare = without_credentials(spec)
    assert bare.storage.tracking_uri == f"http://127.0.0.1:{port}/prefix"
    assert bare.source["storage"]["tracking_uri"] == bare.storage.tracking_uri
    assert spec.storage.tracking_uri == uri  # the original spec is left as it was
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "sweeper"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET_IN_ENV
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    without_credentials(spec)
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == f"{SECRET_IN_URI}@x"
    with pytest.raises(SpecError) as refused:
        check_tracking_uri(uri)
    assert SECRET_IN_URI not in str(refused.value) and str(port) in str(refused.value)
