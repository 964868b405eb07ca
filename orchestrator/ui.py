"""`sla-sweep ui DIR`: the MLflow UI on 127.0.0.1 against a sweep's tracking store.

    sla-sweep ui sla_runs/smoke-20261129-050000     # a sweep directory (its sweep.json names the store)
    sla-sweep ui sla_runs                           # a results directory holding mlflow.db
    sla-sweep ui sqlite:////abs/path/mlflow.db --port 5000

Runs `mlflow server` (the process behind `mlflow ui`) in its own process group, bound to
127.0.0.1 only, on a free port unless --port is given; prints the URL of the sweep's runs and
stops the server (and the workers it started) on Ctrl-C. MLflow's GenAI job runner is switched
off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): a sweep review does not use it, and it costs
several processes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from orchestrator.spec.schema import MLFLOW_DB, sqlite_store
from orchestrator.sweep.records import SWEEP_FILE

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 120.0


class UIError(ValueError):
    """The UI cannot be started for this DIR; the message says why."""


@dataclasses.dataclass(frozen=True)
class Store:
    """A tracking store and, when DIR was a sweep directory, the sweep's experiment and parent run."""

    tracking_uri: str
    experiment_id: str | None = None
    parent_run_id: str | None = None


def resolve_store(target: str) -> Store:
    """DIR -> its tracking store: a sweep directory, a directory holding mlflow.db, or a URI."""
    if "://" in target:
        return Store(target)
    path = Path(target).expanduser().resolve()
    if not path.is_dir():
        raise UIError(
            f"DIR ({target!r}) is not a directory nor a tracking URI (sqlite:///..., http://...)"
        )
    if (path / SWEEP_FILE).is_file():
        meta = json.loads((path / SWEEP_FILE).read_text())
        return Store(
            meta["tracking_uri"], str(meta.get("experiment_id")), meta.get("parent_run_id")
        )
    if (path / MLFLOW_DB).is_file():
        return Store(sqlite_store(path))
    raise UIError(
        f"{path} is neither a sweep directory (sweep.json) nor holds an MLflow store (mlflow.db)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class UIServer:
    """`mlflow server` on 127.0.0.1:port for one store; a context manager that always stops it."""

    def __init__(self, store: Store, port: int | None = None, log_path: Path | None = None) -> None:
        self.store = store
        self.port = port or free_port()
        self.log_path = (
            log_path or Path(tempfile.mkdtemp(prefix="sla-sweep-ui-")) / "mlflow-server.log"
        )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def page(self, fragment: str) -> str:
        """A UI page, e.g. page("experiments/1/runs")."""
        return f"{self.url}/#/{fragment}"

    @property
    def runs_url(self) -> str:
        """The sweep's runs page (or the experiments list when the experiment is unknown)."""
        if self.store.experiment_id is None:
            return self.page("experiments")
        return self.page(f"experiments/{self.store.experiment_id}/runs")

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> UIServer:
        """Start the server and wait until /health answers; UIError with its log tail if it dies."""
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store.tracking_uri,
               "--host", HOST, "--port", str(self.port), "--workers", "1"]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_healthy(timeout_s)
        except BaseException:  # Ctrl-C while starting too: leave no server behind
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UIError(
                    f"mlflow server exited with status {self.proc.returncode}: {self._log_tail()}"
                )
            if self._healthy():
                return
            time.sleep(0.5)
        raise UIError(
            f"mlflow server did not answer on {self.url} within {timeout_s:.0f}s: {self._log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server's process group (gunicorn/uvicorn workers too); idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: no waiting
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=5)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(
                self.proc.pid, sig
            )  # its own session: the group is the server and its workers

    def __enter__(self) -> UIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return " | ".join(text[-lines:]) or f"(empty log {self.log_path})"


# ---- the `sla-sweep ui` subcommand ---------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `sla-sweep ui`."""
    p.add_argument(
        "dir", help="a sweep directory, a results directory holding mlflow.db, or a tracking URI"
    )
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")


def handle(args: argparse.Namespace) -> int:
    """Start the MLflow UI on 127.0.0.1 against a sweep's store and print its URL."""
    try:
        server = UIServer(resolve_store(args.dir), port=args.port).start()
    except UIError as exc:
        print(f"sla-sweep ui: error: {exc}", file=sys.stderr)
        return 2
    print(f"MLflow UI for {server.store.tracking_uri}")
    print(f"  {server.runs_url}")
    if server.store.parent_run_id and server.store.experiment_id:
        print(
            f"  sweep run: {server.page(f'experiments/{server.store.experiment_id}/runs/{server.store.parent_run_id}')}"
        )
    print(f"(server log: {server.log_path}; Ctrl-C stops it)", flush=True)
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
