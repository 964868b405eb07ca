"""`sla-sweep ui` stops its whole server (mlflow server and the uvicorn process under it) on
SIGTERM, SIGHUP and SIGINT alike, and when its own parent goes away: no process of it is left
and its port is free, and the temporary folder of its log is gone. A second UI on the port the
first holds is refused in one line and prints no links. Real processes on a sqlite store of
their own; no sweep needed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from orchestrator.ui import free_port

pytestmark = pytest.mark.slow

STARTUP_S = 180


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for every UI here, its tables made once (a server's first start on an
    empty store spends most of its start-up making them)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('ui_store')}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def start_ui(store: str, port: int, tmp: Path, stderr=subprocess.STDOUT) -> subprocess.Popen:
    """`sla-sweep ui STORE --port PORT` with its temporary files under `tmp` (TMPDIR)."""
    cmd = [sys.executable, "-m", "orchestrator", "ui", store, "--port", str(port)]
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)


def wait_serving(proc: subprocess.Popen, port: int) -> list[psutil.Process]:
    """Until the UI prints its links and answers; its processes (itself and every descendant)."""
    first = proc.stdout.readline()
    assert first.startswith("MLflow UI for sqlite:///"), first + proc.stdout.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        assert r.status == 200
    me = psutil.Process(proc.pid)
    tree = [me, *me.children(recursive=True)]
    assert len(tree) >= 2, tree  # sla-sweep ui and its mlflow server at least
    return tree


def running(p: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it to reap it)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(tree: list[psutil.Process], port: int, timeout_s: float = 40) -> None:
    deadline = time.monotonic() + timeout_s
    while any(running(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in tree if running(p)]
    assert not alive, [(p.pid, p.name()) for p in alive]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s,
        pytest.raises(ConnectionRefusedError),
    ):
        s.connect(("127.0.0.1", port))  # nothing listens
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # a new server can take the port (SO_REUSEADDR, as uvicorn's own: closed connections
        # of the old one may wait in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name
)
def test_a_stop_signal_leaves_no_process_and_frees_the_port(store, sig, tmp_path):
    port = free_port()
    proc = start_ui(store, port, tmp_path)
    try:
        tree = wait_serving(proc, port)
        assert [p.name for p in tmp_path.iterdir()][0].startswith("sla-sweep-ui-"), "its log"
        proc.send_signal(sig)
        assert proc.wait(timeout=40) == 0
        assert_all_gone(tree, port)
        assert list(tmp_path.iterdir()) == [], "the temporary folder of its log is gone"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_second_ui_on_a_port_the_first_holds_is_one_line_and_no_links(store, tmp_path):
    """The first UI keeps serving; the second prints no link, exits 2 with one line naming the
    port, starts no server and leaves no temporary folder."""
    port = free_port()
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = start_ui(store, port, tmp_path / "first")
    try:
        tree = wait_serving(first, port)
        second = start_ui(store, port, tmp_path / "second", stderr=subprocess.PIPE)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, (out, err)
        assert out == "", "no links"
        assert len(err.strip().splitlines()) == 1, err
        assert f"port {port} on 127.0.0.1 is taken" in err, err
        assert list((tmp_path / "second").iterdir()) == []
        assert first.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.status == 200, "the first still serves"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=40) == 0
        assert_all_gone(tree, port)
        assert list((tmp_path / "first").iterdir()) == []
    finally:
        if first.poll() is None:
            first.kill()


def test_its_parent_going_away_stops_it(store, tmp_path):
    """A shell starts `sla-sweep ui` and is killed (SIGKILL: no chance to pass anything on)."""
    port = free_port()
    (tmp_path / "tmp").mkdir()
    ui = " ".join([f"TMPDIR={tmp_path / 'tmp'}", sys.executable, "-m", "orchestrator", "ui",
                   store, "--port", str(port)])  # fmt: skip
    shell = subprocess.Popen(["bash", "-c", f"{ui} > {tmp_path}/ui.log 2>&1 & echo $!; wait"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    ui_pid = int(shell.stdout.readline())
    try:
        deadline = time.monotonic() + STARTUP_S
        log = tmp_path / "ui.log"
        while not log.is_file() or "MLflow UI for" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text() if log.is_file() else "no log"
            time.sleep(0.5)
        me = psutil.Process(ui_pid)
        tree = [me, *me.children(recursive=True)]
        os.kill(shell.pid, signal.SIGKILL)
        shell.wait(timeout=10)
        assert_all_gone(tree, port)
        assert "parent process gone" in log.read_text()
        assert [p.name for p in (tmp_path / "tmp").iterdir()] == [], "no temporary folder"
    finally:
        for p in psutil.Process().children(recursive=True):
            if p.pid == ui_pid:
                p.kill()
