"""`sla-sweep ui DIR`: which store a DIR means, and one clear line for a DIR that has none."""

from __future__ import annotations

import json
import socket

from orchestrator.cli import main as cli_main
from orchestrator.ui import free_port, resolve_store


def test_sweep_directory_names_its_store_and_experiment(tmp_path):
    meta = {"name": "smoke", "tracking_uri": "sqlite:////somewhere/mlflow.db",
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


def test_a_server_that_cannot_start_is_one_error_with_its_log(tmp_path):
    """A port already taken: mlflow server exits, and UIError quotes the end of its log."""
    import pytest

    from orchestrator.ui import Store, UIError, UIServer

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = UIServer(
            Store(f"sqlite:///{tmp_path}/mlflow.db"), port=port, log_path=tmp_path / "log"
        )
        with pytest.raises(UIError, match="mlflow server exited"):
            server.start(timeout_s=90)
    assert server.proc.poll() is not None
