"""`sla-sweep ui DIR`: which store a DIR means, and one clear line for a DIR that has none, a
store that is gone, or a port that is taken, before any server or temporary folder exists."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator.cli import main as cli_main
from orchestrator.ui import Store, UIError, UIServer, free_port, resolve_store


def test_sweep_directory_names_its_store_and_experiment(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mlflow.db").write_bytes(b"")
    meta = {"name": "smoke", "tracking_uri": f"sqlite:///{tmp_path}/runs/mlflow.db",
            "experiment_id": "3", "parent_run_id": "a" * 32}  # fmt: skip
    (tmp_path / "sweep.json").write_text(json.dumps(meta))
    store = resolve_store(str(tmp_path))
    assert store.tracking_uri == meta["tracking_uri"]
    assert store.experiment_id == "3" and store.parent_run_id == "a" * 32


def test_results_directory_with_mlflow_db(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    assert resolve_store(str(tmp_path)).tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_tracking_uri_passes_through():
    assert resolve_store("http://127.0.0.1:5000").tracking_uri == "http://127.0.0.1:5000"


def test_dir_without_a_store_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli_main(["ui", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sweep directory" in err and str(tmp_path) in err
    assert cli_main(["ui", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_free_port_is_bindable_on_loopback():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_a_taken_port_is_refused_before_anything_starts(tmp_path, monkeypatch):
    """Something listens on the port: UIError before a server process or a folder exists."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = UIServer(Store(f"sqlite:///{tmp_path}/mlflow.db"), port=port)
        with pytest.raises(UIError, match=f"port {port} on 127.0.0.1 is taken"):
            server.start(timeout_s=90)
    assert server.proc is None
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_server_that_cannot_start_is_one_error_with_its_log(tmp_path, monkeypatch):
    """A store mlflow server cannot open: it exits, UIError quotes the end of its log, and its
    temporary log folder is gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    server = UIServer(Store("bogus://nowhere"))
    with pytest.raises(UIError, match="mlflow server exited.*unsupported URI"):
        server.start(timeout_s=90)
    assert server.proc.poll() is not None
    assert list((tmp_path / "tmp").iterdir()) == []


def real_store(root: Path) -> tuple[str, str, str]:
    """A real sqlite MLflow store with an experiment and a run: (uri, experiment id, run id)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("gone")
    run = client.create_run(experiment).info.run_id
    return uri, experiment, run


def test_a_sweep_whose_store_is_gone_is_one_line_and_creates_nothing(tmp_path):
    """The sweep's mlflow.db deleted: `sla-sweep ui SWEEP` exits 2 with one line naming it, no
    new store where it was, no server, no links, no temporary folder."""
    runs = tmp_path / "runs"
    runs.mkdir()
    uri, experiment, run = real_store(runs)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    meta = {"name": "gone", "tracking_uri": uri, "experiment_id": experiment, "parent_run_id": run}
    (sweep / "sweep.json").write_text(json.dumps(meta))
    (runs / "mlflow.db").unlink()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    for target in (str(sweep), uri):  # the sweep, and its store's URI given directly
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "ui", target, "--port", str(port)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp)},
        )  # fmt: skip
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert done.stdout == "", "no links printed"
        err = done.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("sla-sweep ui: error: "), err
        assert f"the MLflow store {runs / 'mlflow.db'}" in err and "is not there" in err
        assert sorted(p.name for p in runs.iterdir()) == [], "nothing created where it was"
        assert list(tmp.iterdir()) == [], "no temporary folder"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "no server started"
