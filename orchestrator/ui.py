"""`sla-sweep ui DIR`: the MLflow UI on 127.0.0.1 against a sweep's tracking store.

    sla-sweep ui sla_runs/smoke-20261129-050000     # a sweep directory (its sweep.json names the store)
    sla-sweep ui sla_runs                           # a results directory holding mlflow.db
    sla-sweep ui sqlite:////abs/path/mlflow.db --port 5000

Runs `mlflow server` (the process behind `mlflow ui`) in its own process group, bound to
127.0.0.1 only, on a free port unless --port is given, and prints the links of a sweep: its runs
table (the trials, their settings and key metrics as columns), the compare view of all its
trials, the sweep's run and its registered model. It stops the server's whole process group
(mlflow server and the uvicorn process it starts) on SIGINT (Ctrl-C), SIGTERM and SIGHUP alike,
when the server exits, and when its own parent process goes away; the port is free afterwards,
and the temporary folder of the server's log is gone. A sqlite store that is not there (mlflow
server would create an empty one) and a port something listens on are refused in one line
before anything starts.
MLflow's GenAI job runner is switched off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): a sweep
review does not use it, and it costs several processes; so is its usage telemetry
(MLFLOW_DISABLE_TELEMETRY), whose flush at exit held a stopping server for seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

from orchestrator.spec import SpecError
from orchestrator.spec.schema import MLFLOW_DB, sqlite_store
from orchestrator.storage import SCHEMES
from orchestrator.storage.records import SWEEP_FILE
from orchestrator.storage.sweep_place import open_place
from orchestrator.sweep.preflight import sqlite_file
from orchestrator.tracking.mlflow_review import links, model_link
from orchestrator.tracking.tags import MODEL_TAG, PARENT_TAG

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 120.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PARENT_POLL_S = 0.5


class StopSignal(BaseException):
    """A stop signal arrived (raised once, by the handler stop_on_signals installs)."""


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
    # a sweep in a bucket (s3://, gs://, ...): its files, read here; any other URI (sqlite:///,
    # postgresql://, http://, databricks://) is a tracking store
    if "://" in target and target.split("://", 1)[0].lower() in SCHEMES:
        target = str(_pulled_sweep(target))
    elif "://" in target:
        return _existing(Store(target), "")
    path = Path(target).expanduser().resolve()
    if not path.is_dir():
        raise UIError(
            f"DIR ({target!r}) is not a directory nor a tracking URI (sqlite:///..., http://...)"
        )
    if (path / SWEEP_FILE).is_file():
        meta = json.loads((path / SWEEP_FILE).read_text())
        store = Store(
            meta["tracking_uri"], str(meta.get("experiment_id")), meta.get("parent_run_id")
        )
        return _existing(store, f" (named by {path / SWEEP_FILE})")
    if (path / MLFLOW_DB).is_file():
        return Store(sqlite_store(path))
    raise UIError(
        f"{path} is neither a sweep directory (sweep.json) nor holds an MLflow store (mlflow.db)"
    )


def _existing(store: Store, named_by: str) -> Store:
    """`store` when it is there: a sqlite store whose file is gone is a UIError (mlflow server
    would create an empty one in its place, and the sweep's runs are not in it)."""
    db = sqlite_file(store.tracking_uri)
    if db is not None and not db.is_file():
        raise UIError(
            f"the MLflow store {db}{named_by} is not there (moved or deleted?); nothing was "
            "started or created; give the sweep's store as sqlite:////PATH/mlflow.db"
        )
    return store


def _pulled_sweep(uri: str) -> Path:
    """The working copy of a bucket sweep's files (orchestrator.storage.sweep_place)."""
    try:
        return open_place(uri).local
    except SpecError as exc:
        raise UIError(str(exc)) from None


def check_port_free(port: int) -> None:
    """UIError when something listens on 127.0.0.1:port (another `sla-sweep ui` or any server):
    mlflow server would fail on it after the other one had answered this one's health check."""
    if not 0 < port < 65536:
        raise UIError(f"--port ({port}) must be a port number from 1 to 65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise UIError(
                f"port {port} on {HOST} is taken ({exc.strerror or exc}: another sla-sweep ui "
                "or server holds it); give another --port or leave it out for a free one"
            ) from None


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
        self.log_path = log_path  # None: a temporary folder of its own, made by start()
        self._tmp_dir: Path | None = None  # that folder, removed by stop()
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
        if self.store.parent_run_id is None:
            return self.page(f"experiments/{self.store.experiment_id}/runs")
        return links(self.url, self.store.experiment_id, self.store.parent_run_id, [])["runs"]

    def api(self, path: str, body: dict | None = None) -> dict:
        """One call of the server's REST API (GET, or POST with a JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{path}", data=data,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> UIServer:
        """Start the server and wait until /health answers; UIError, before anything starts,
        when the port is taken, and with the server's log tail if it dies."""
        check_port_free(self.port)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store.tracking_uri,
               "--host", HOST, "--port", str(self.port), "--workers", "1"]  # fmt: skip
        # no job runner; no usage telemetry (its flush at exit holds a stopping server for seconds)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
        try:  # Ctrl-C while starting too: leave no server and no temporary folder behind
            if self.log_path is None:
                self._tmp_dir = Path(tempfile.mkdtemp(prefix="sla-sweep-ui-"))
                self.log_path = self._tmp_dir / "mlflow-server.log"
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            self._wait_healthy(timeout_s)
        except BaseException:
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
            if self._healthy() and self.proc.poll() is None:  # ours answers, not another's
                return
            time.sleep(0.5)
        raise UIError(
            f"mlflow server did not answer on {self.url} within {timeout_s:.0f}s: {self._log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server's process group; idempotent. SIGTERM first (mlflow server passes it
        on to uvicorn, which shuts down gracefully and frees the port); once the serving
        processes are gone, or after 15 s, SIGKILL to what is left of the group (mlflow server's
        own exit takes seconds more and holds nothing). The temporary folder of its log goes
        with it."""
        try:
            self._stop_processes()
        finally:
            if self._tmp_dir is not None:
                shutil.rmtree(self._tmp_dir, ignore_errors=True)
                self._tmp_dir = self.log_path = None

    def _stop_processes(self) -> None:
        if self.proc is None:
            return
        try:
            serving = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:  # the server exited: its group may still hold uvicorn
            serving = []
        self._signal(signal.SIGTERM)
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: no more waiting
            psutil.wait_procs(serving, timeout=15)
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
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
        if self.log_path is None:
            return "(no log)"
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
    """Start the MLflow UI on 127.0.0.1 against a sweep's store, print its links, and serve
    until a stop signal, the server's exit or this process's parent going away."""
    try:
        store = resolve_store(args.dir)
    except UIError as exc:
        print(f"sla-sweep ui: error: {exc}", file=sys.stderr)
        return 2
    with stop_on_signals():
        server = UIServer(store, port=args.port)
        try:
            server.start()
            print(f"MLflow UI for {server.store.tracking_uri}")
            for what, url in sweep_links(server).items():
                print(f"  {what}: {url}" if what != "runs" else f"  {url}")
            print(f"(server log while it runs: {server.log_path}; Ctrl-C stops it)", flush=True)
            return serve(server)
        except UIError as exc:
            print(f"sla-sweep ui: error: {exc}", file=sys.stderr)
            return 2
        except StopSignal:
            return 0
        finally:
            server.stop()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """SIGINT, SIGTERM and SIGHUP raise StopSignal once (later ones are only recorded, so that
    the stop they asked for runs to its end); the previous handlers come back afterwards."""
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1:
            raise StopSignal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(server: UIServer) -> int:
    """Wait while the server runs and this process's parent is alive: 0 when the parent went
    away, 1 when the server exited by itself."""
    parent = os.getppid()
    while server.proc is not None and server.proc.poll() is None:
        if os.getppid() != parent:  # re-parented: whoever started us is gone
            print("sla-sweep ui: parent process gone; stopping the server", file=sys.stderr)
            return 0
        time.sleep(PARENT_POLL_S)
    print(f"sla-sweep ui: mlflow server exited: {server._log_tail()}", file=sys.stderr)
    return 1


def sweep_links(server: UIServer) -> dict[str, str]:
    """The links to print: a sweep's runs table, compare view, parent run and registered
    model (asked of the running server), else the experiments list."""
    store = server.store
    if store.experiment_id is None or store.parent_run_id is None:
        return {"runs": server.runs_url}
    children = server.api("runs/search", {
        "experiment_ids": [store.experiment_id], "max_results": 5000,
        "filter": f"tags.`{PARENT_TAG}` = '{store.parent_run_id}'",
    }).get("runs", [])  # fmt: skip
    ids = [r["info"]["run_id"] for r in children]
    found = links(server.url, store.experiment_id, store.parent_run_id, ids)
    parent = server.api(f"runs/get?run_id={store.parent_run_id}")["run"]
    tags = {t["key"]: t["value"] for t in parent["data"].get("tags", [])}
    if tags.get(MODEL_TAG, "").count("/") == 2:  # models:/NAME/VERSION
        name, version = tags[MODEL_TAG][len("models:/") :].split("/")
        found["registered model"] = model_link(server.url, name, version)
    return found
