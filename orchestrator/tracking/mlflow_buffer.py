"""The driver's MLflow writes, queued and sent in order by one background thread, so that a
tracking server that stops answering never blocks the Tune loop nor fails the sweep.

Every write is a record (a plain dict, the same one the journal holds): a run to create, a batch
of metric rows (explicit steps and timestamps), params and tags, a status, an artifact (hard-linked
into the sweep directory's spool when queued, so a checkpoint rotated away meanwhile is still
sent), dataset inputs, an experiment tag. A run created while the server is away gets a
placeholder id (`pending-...`) at once; the records that name it are sent under the real id once
the run exists, and trials.json is patched to it.

An outage is said once: one line when a send first fails, one when the server answers again with
how much was held. Sends retry with exponential backoff. Nothing is sent twice on purpose: a
run's metric rows already sent are kept in a set and left out, a run whose creation may have
reached the server is looked up (by its tags) before it is created again, and MLflow itself
keeps one row per (key, step, timestamp, value). At the end, `close()` waits a bounded time;
what is still pending goes to `<sweep dir>/mlflow_journal.jsonl`, which the next buffer of that
sweep (`sla-sweep resume`) sends first.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.storage.records import TRIALS_FILE
from orchestrator.tracking.mlflow_sends import (
    dataset_input,
    send_artifact,
    send_batch,
    short,
    transient,
)

JOURNAL = "mlflow_journal.jsonl"
SPOOL = "mlflow_spool"
PENDING = "pending-"
THREAD_NAME = "sla-sweep-mlflow"
RETRY_MIN_S, RETRY_MAX_S = 0.5, 10.0
EXIT_WAIT_S = 10.0  # a process ending without close(): how long its records may still take
# A local store (sqlite, a database) answers in milliseconds and never goes away mid-sweep: each
# write waits for its record to be sent, as a direct call would, so a driver SIGKILLed right
# after a trial ended has logged all of it. Only a tracking server's writes go on in the
# background (what its process holds when SIGKILLed is lost; close() journals the rest).
LOCAL_WAIT_S = 60.0
# MLflow's own HTTP retries (7, backoff 2: minutes per call) would hide an outage inside one
# call; the buffer retries instead. Its "View run ... at" line per ended run would go between
# the progress lines; the sweep prints its links at the end. Set for an http(s) store unless
# the user set them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # fmt: skip

RECORDS_LOCK = threading.Lock()  # trials.json: the progress callback's writes and our patches
_SHARED: dict[tuple[str, str], MlflowBuffer] = {}
_SHARED_LOCK = threading.Lock()


def shared_buffer(client, name: str, sweep_dir: Path | None) -> MlflowBuffer:
    """The process's one buffer of a sweep's store (every recorder of that sweep queues into
    it, so its records keep their order); a new one after close()."""
    key = (name, str(sweep_dir))
    with _SHARED_LOCK:
        buffer = _SHARED.get(key)
        if buffer is None:
            buffer = _SHARED[key] = MlflowBuffer(client, name=name, sweep_dir=sweep_dir)
        return buffer


def quick_http_failures(tracking_uri: str) -> None:
    """Let one MLflow call to a server fail within seconds (see HTTP_DEFAULTS), and keep
    urllib3's line per retry of the buffer's own sends out of the output (the outage is said
    once, by the buffer)."""
    if tracking_uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        pool = logging.getLogger("urllib3.connectionpool")
        if not any(isinstance(f, _QuietRetries) for f in pool.filters):
            pool.addFilter(_QuietRetries())


class _QuietRetries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != THREAD_NAME


class MlflowBuffer:
    """Records to one MLflow store, sent in order by a background thread (see the module)."""

    def __init__(
        self,
        client,
        *,
        name: str,
        sweep_dir: Path | None = None,
        say: Callable[[str], None] | None = None,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self.client = client
        self.name = name  # the store as it may be shown (no credentials)
        self.sweep_dir = Path(sweep_dir) if sweep_dir else None
        self.say = say or (lambda line: print(f"[sla-sweep] {line}", flush=True))
        self.retry_max_s = retry_max_s
        self.wait_s = 0.0 if name.startswith(("http://", "https://")) else LOCAL_WAIT_S
        self._cond = threading.Condition()
        self._ops: deque[dict[str, Any]] = deque()
        self._ids: dict[str, str] = {}  # placeholder -> run id
        self._sent: dict[str, set[tuple]] = {}  # run id -> (key, step, timestamp) sent
        self._seq = itertools.count()
        self._down_since: float | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._replaying = self._load_journal()
        if self._ops:
            with self._cond:
                self._wake()

    # ---- queueing (the caller's thread; waits only for a local store) ------------------------
    def submit(self, op: dict[str, Any]) -> None:
        if op["op"] == "artifact":
            op = {**op, **self._spool(Path(op["path"]))}
        with self._cond:
            self._ops.append(op)
            self._closed = False
            self._wake()
        if self.wait_s and threading.current_thread() is not self._thread:
            self.flush(self.wait_s)  # a local store: sent before the caller goes on

    def _wake(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            atexit.register(self._at_exit)  # once per thread started; close() unregisters it
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def new_run(self, op: dict[str, Any]) -> str:
        """Queue a run's creation; its placeholder id, usable in records at once."""
        ref = PENDING + uuid.uuid4().hex
        self.submit({**op, "op": "create_run", "ref": ref})
        return ref

    def resolve(self, run_id: str | None) -> str | None:
        """The run id for a placeholder once the run exists (the placeholder until then)."""
        return self._ids.get(run_id, run_id) if run_id else run_id

    def pending_runs(self) -> dict[str, str]:
        """trial id -> placeholder of the runs still to be created (a journal's included)."""
        with self._cond:
            return {op["trial"]: op["ref"] for op in self._ops
                    if op["op"] == "create_run" and op.get("trial")}  # fmt: skip

    def pending(self) -> tuple[int, int]:
        """(records, metric rows) not sent yet."""
        with self._cond:
            return len(self._ops), sum(len(op.get("metrics", ())) for op in self._ops)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for everything queued to be sent; whether it was."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._ops, timeout=max(0.0, timeout))

    def close(self, timeout: float) -> bool:
        """flush(timeout), then stop the thread; what is left goes to the journal, said in one
        line with how to send it. Whether everything was sent."""
        sent = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)  # a send in flight may still succeed: sent again later
        atexit.unregister(self._at_exit)
        with _SHARED_LOCK:
            for key, buffer in list(_SHARED.items()):
                if buffer is self:
                    del _SHARED[key]
        self._write_journal()
        return sent

    # ---- the sending thread --------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._ops or self._closed)
                if self._closed:
                    return
                op = self._ops[0]
            try:
                self._send(op)
            except Exception as exc:  # noqa: BLE001 -- sorted just below: lost or retried
                if not transient(exc):
                    self.say(f"MLflow refused a {op['op']} record, left out: {short(exc)}")
                else:
                    op["tried"] = True
                    self._outage_starts(exc)
                    failures += 1
                    backoff = min(RETRY_MIN_S * 2 ** (failures - 1), self.retry_max_s)
                    with self._cond:  # new records do not cut it short; close() does
                        self._cond.wait_for(lambda: self._closed, timeout=backoff)
                    continue
            failures = 0
            self._outage_ends()
            with self._cond:
                if self._ops and self._ops[0] is op:
                    self._ops.popleft()
                if not self._ops and self._replaying:
                    self._replaying = False
                    self._journal_path().unlink(missing_ok=True)
                self._cond.notify_all()

    def _outage_starts(self, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.say(f"MLflow tracking server {self.name} unreachable ({short(exc)}); holding "
                     "its records and retrying in the background")  # fmt: skip

    def _outage_ends(self) -> None:
        if self._down_since is not None:
            records, rows = self.pending()
            self.say(f"MLflow tracking server {self.name} answers again after "
                     f"{time.monotonic() - self._down_since:.0f} s; sending the {records} records "
                     f"held ({rows} metric rows)")  # fmt: skip
            self._down_since = None

    def _send(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "create_run":
            return self._create_run(op)
        if kind == "experiment_tag":
            return self.client.set_experiment_tag(op["experiment_id"], op["key"], op["value"])
        run = self._ids.get(op["run"], op["run"])
        if run.startswith(PENDING):
            raise ValueError(f"run {run} was never created")
        if kind == "batch":
            return send_batch(self.client, run, op, self._sent.setdefault(run, set()))
        if kind == "status":
            return self.client.update_run(run, status=op["status"])
        if kind == "end":
            return self.client.set_terminated(run, status=op["status"], end_time=op["end_time"])
        if kind == "inputs":
            return self.client.log_inputs(run, datasets=[dataset_input(d) for d in op["datasets"]])
        if kind == "artifact":
            return send_artifact(self.client, run, op)
        raise ValueError(f"unknown record {kind!r}")

    def _create_run(self, op: dict[str, Any]) -> None:
        found = []
        if op.get("find") and (op.get("tried") or op.get("journal")):  # a lost answer, a replay
            found = self.client.search_runs([op["experiment_id"]], op["find"], max_results=1)
        run_id = found[0].info.run_id if found else self.client.create_run(
            op["experiment_id"], start_time=op["start_time"], tags=op["tags"],
            run_name=op["run_name"]).info.run_id  # fmt: skip
        self._ids[op["ref"]] = run_id
        self._patch_records(op["ref"], run_id)

    # ---- the sweep directory: spool, journal, trials.json ------------------------------------
    def _spool(self, path: Path) -> dict[str, Any]:
        """The artifact hard-linked (copied across file systems) into the spool; as it is when
        there is no sweep directory or it is not there."""
        if self.sweep_dir is None or not path.exists():
            return {}
        into = self.sweep_dir / SPOOL / f"{os.getpid()}-{next(self._seq)}-{uuid.uuid4().hex[:6]}"
        into.mkdir(parents=True)
        target = into / path.name
        if path.is_dir():
            shutil.copytree(path, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(path), str(target))
        return {"path": str(target), "spooled": True}

    def _journal_path(self) -> Path:
        assert self.sweep_dir is not None
        return self.sweep_dir / JOURNAL

    def _load_journal(self) -> bool:
        if self.sweep_dir is None or not self._journal_path().is_file():
            return False
        damaged = 0
        for line in self._journal_path().read_text().splitlines():
            try:
                self._ops.append({**json.loads(line), "journal": True})
            except (json.JSONDecodeError, TypeError):  # a line cut by a kill, or not a record
                damaged += line.strip() != ""
        cut = f" ({damaged} damaged lines left out)" if damaged else ""
        self.say(f"sending the {len(self._ops)} MLflow records kept in {self._journal_path()}{cut}")
        return True

    def _write_journal(self) -> None:
        with self._cond:  # placeholders of runs made already: their ids (this process knows)
            left = [{**op, "run": self._ids.get(op["run"], op["run"])} if "run" in op else op
                    for op in self._ops]  # fmt: skip
        if not left:
            return
        if self.sweep_dir is None:
            self.say(f"MLflow tracking server {self.name} unreachable: {len(left)} records lost")
            return
        path = self._journal_path()
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in left))
        os.replace(tmp, path)
        rows = sum(len(op.get("metrics", ())) for op in left)
        self.say(f"MLflow tracking server {self.name} still unreachable: {len(left)} records "
                 f"({rows} metric rows) kept in {path}; send them with: sla-sweep resume "
                 f"{self.sweep_dir}")  # fmt: skip

    def _patch_records(self, ref: str, run_id: str) -> None:
        if self.sweep_dir is None:
            return
        path = self.sweep_dir / TRIALS_FILE
        with RECORDS_LOCK:
            text = path.read_text() if path.is_file() else ""
            if ref in text:
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(text.replace(ref, run_id))
                os.replace(tmp, path)

    def _at_exit(self) -> None:
        """The process ends without close() (an error escaped the sweep): send what is left,
        for a few seconds, and journal the rest."""
        if not self._closed:
            with contextlib.suppress(Exception):
                self.close(EXIT_WAIT_S)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
