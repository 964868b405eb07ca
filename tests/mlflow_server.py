"""A real `mlflow server` for tests, on 127.0.0.1 only: a sqlite store and an artifacts
directory of its own, a free port, stopped and started again on the same port and store (an
outage), and no process left behind (the server runs in its own session; stop() kills the group).

    with MlflowServer(tmp_path) as server:       # or the `mlflow_server` fixture
        client = MlflowClient(server.url)
        server.stop(); ...; server.start()        # the same URL and store afterwards
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """`mlflow server` on HOST:port over root/mlflow.db, artifacts in root/artifacts."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.log_path = self.root / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def backend_uri(self) -> str:
        return f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> MlflowServer:
        """Start the server (again) and wait until /health answers."""
        assert self.proc is None, "already running"
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(self.port),
               "--backend-store-uri", self.backend_uri, "--workers", "1",
               "--artifacts-destination", str((self.root / "artifacts").resolve())]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"mlflow server did not come up on {self.url}:\n{tail}")
            time.sleep(0.3)
        return self

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, SIGKILL after 5 s); the port is free after."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None
        deadline = time.monotonic() + 10
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def mlflow_server(tmp_path):
    """A running MlflowServer under the test's tmp_path, stopped (group and all) afterwards."""
    with MlflowServer(tmp_path / "mlflow-server") as server:
        yield server
