"""What a sweep driver (`run`, `resume`) holds while it works: the sweep directory's lock (one
driver per sweep), the MLflow store's creation lock, and SIGTERM/SIGHUP handled like Ctrl-C.

The locks are flock()s on files, so they die with the process that holds them: a killed driver
never leaves a sweep locked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from orchestrator.spec import SpecError
from orchestrator.storage.local import file_lock

DRIVER_LOCK = "driver.lock"  # in the sweep directory; holds the driver's pid
# What timeout, batch schedulers, systemd and Kubernetes send, and a closed terminal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def driver_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep directory for this driver; a SpecError naming the holder when another
    driver (run or resume) is alive on it."""
    path = Path(sweep_dir) / DRIVER_LOCK
    try:
        with file_lock(path, wait=False) as handle:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
    except BlockingIOError:
        holder = _read_pid(path)
        raise SpecError(
            str(sweep_dir),
            [f"another sla-sweep driver{holder} is running this sweep; wait for it to end or "
             "stop it (Ctrl-C), then resume"],
        ) from None  # fmt: skip


def _read_pid(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """One process at a time creates (or first opens) a sqlite store: MLflow's schema creation
    and migrations are not safe when two sweeps start at once on a store that does not exist yet.
    Other stores (a server, a database) serialise themselves."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    db = Path(tracking_uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db.with_name(db.name + ".lock")):
        yield


def open_store(tracking_uri: str, experiment: str):
    """The sweep's SweepRecorder (MLflow experiment found or created), the store created or
    first opened under store_lock."""
    from orchestrator.tracking.mlflow_log import SweepRecorder  # MLflow: heavy, not at CLI start

    with store_lock(tracking_uri):
        return SweepRecorder(tracking_uri, experiment)


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP do what Ctrl-C does for the block: whatever handles SIGINT at that
    moment (Tune's: stop the trials, save the experiment state; a second one stops at once).
    Yields the list of stop signals received, SIGINT included when it ended the block."""
    received: list[int] = []

    def handler(signum, frame) -> None:
        received.append(signum)
        on_sigint = signal.getsignal(signal.SIGINT)
        if callable(on_sigint):
            on_sigint(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    # After ray.init: Ray's core worker installs a SIGTERM handler of its own that aborts the
    # driver with a C++ stack dump and without saving Tune's state. Handlers can only be set
    # from the main thread (a sweep run from another thread keeps Ray's).
    main = threading.current_thread() is threading.main_thread()
    before = {s: signal.signal(s, handler) for s in STOP_SIGNALS} if main else {}
    try:
        try:
            yield received
        except KeyboardInterrupt:  # a second Ctrl-C (or stop signal): Tune stopped at once
            received.append(signal.SIGINT)
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def exit_code(signum: int | None) -> int:
    """The conventional status of a process stopped by `signum` (128 + n; Ctrl-C: 130)."""
    return 128 + int(signum or signal.SIGINT)
