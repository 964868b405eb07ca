"""`sla-sweep ui DIR`'s server (orchestrator.ui.UIServer: a real `mlflow server` and its
workers) listens on 127.0.0.1 only: every listening socket of its process tree is bound to it."""

from __future__ import annotations

import urllib.request

import psutil
import pytest

pytestmark = pytest.mark.slow


def listening(processes: list[psutil.Process]) -> list[tuple[str, int, int]]:
    """(ip, port, pid) of every listening TCP socket of these processes."""
    pids = {p.pid for p in processes}
    return [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]  # fmt: skip


def test_mlflow_ui_listens_on_loopback_only(tmp_path):
    from orchestrator.ui import UIServer, resolve_store

    (tmp_path / "mlflow.db").write_bytes(b"")  # a results directory with an (empty) store
    with UIServer(resolve_store(str(tmp_path)), log_path=tmp_path / "server.log") as server:
        with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
            assert response.status == 200
        root = psutil.Process(server.proc.pid)
        sockets = listening([root, *root.children(recursive=True)])
        assert any(port == server.port for _, port, _ in sockets), sockets
        assert all(ip == "127.0.0.1" for ip, _, _ in sockets), sockets
    assert server.proc.poll() is not None, "the server outlived the command"
