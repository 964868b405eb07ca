"""What must hold on this machine and at the tracking server before a sweep creates anything,
beside the TCP checks of orchestrator.sweep.reachable: the directories a sweep writes can be
written, a tracking URI's port is a number, and an MLflow server that accepts a connection also
answers a request (within ANSWER_TIMEOUT_S; MLflow's own client retries a silent server for
minutes). Each is a SpecError, one line, before the base model is trained or Ray starts."""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.spec import ExperimentSpec, SpecError
from orchestrator.spec.storage_spec import port_problem
from orchestrator.values import shown

ANSWER_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 3.0
HTTP_PORTS = {"http": 80, "https": 443}


def check_writable(spec: ExperimentSpec, tracking_uri: str) -> None:
    """A SpecError naming each directory a sweep would write (a local results_dir, the
    directory of a sqlite tracking store) that cannot be written or created here."""
    places = []
    if not spec.storage.remote:
        places.append(("storage.results_dir", Path(spec.storage.results_dir), "DIR"))
    db = sqlite_file(tracking_uri)
    if db is not None:
        places.append(("storage.tracking_uri", db.parent, "sqlite:////DIR/mlflow.db"))
    problems, seen = [], set()
    for key, path, example in places:
        blocked = _nearest_existing(path)
        if blocked is None or blocked in seen or not blocked.is_dir():
            continue  # a file in the way is the spec's to report
        seen.add(blocked)
        why = _write_problem(blocked)
        if why:
            where = f"{path}" if blocked == path else f"{path} cannot be created: {blocked}"
            problems.append(
                f"{key}: {where} {why}; run from a writable directory or give a writable "
                f"place (--set {key}={example})"
            )
    if problems:
        raise SpecError(spec.name, problems)


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a sqlite:/// tracking URI (None for any other store)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0]).absolute()


def _nearest_existing(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return None


def _write_problem(directory: Path) -> str | None:
    """Why files cannot be made in `directory`; None when they can (os.access sees a read-only
    mount for root too, whom permission bits do not stop)."""
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        return "is on a read-only filesystem"
    return "is not writable by this user"


def check_tracking_answers(tracking_uri: str, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
    """A SpecError when the tracking URI's port is not a number, or when an MLflow server
    (http/https) accepts a connection but sends nothing back to a request within timeout_s.
    (Nothing accepting a connection at all is orchestrator.sweep.reachable's to say.)"""
    problem = port_problem(tracking_uri)
    if problem:
        raise SpecError("storage.tracking_uri", [f"{shown(_public(tracking_uri))} {problem}"])
    parts = urlsplit(tracking_uri)
    scheme = parts.scheme.lower()
    if scheme not in HTTP_PORTS or not parts.hostname:
        return
    port = parts.port or HTTP_PORTS[scheme]
    server = f"{scheme}://{parts.hostname}:{port}"  # never a user:password@
    started = time.monotonic()
    why = _unanswered(parts.hostname, port, scheme == "https", timeout_s)
    if why:
        waited = time.monotonic() - started
        raise SpecError(
            "storage.tracking_uri",
            [f"the MLflow server at {server} accepted a connection but {why} within "
             f"{waited:.1f} s; check that it is an MLflow server and that it is not "
             "stuck, or leave storage.tracking_uri out for the local sqlite store"],
        )  # fmt: skip


def _public(uri: str) -> str:
    """`uri` without a user:password@ (for messages)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", uri)


def _unanswered(host: str, port: int, tls: bool, timeout_s: float) -> str | None:
    """Why a GET /health to host:port got no reply within timeout_s; None when any reply came
    (any status, even an error: only silence is refused here)."""
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError:
        return None  # not connectable: orchestrator.sweep.reachable reports it
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        if tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=host)
        request = f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        if not sock.recv(1):
            return "closed it without answering a request"
        return None
    except TimeoutError:
        return "did not answer a request"
    except ssl.SSLError:
        return None  # it spoke, if not TLS as expected: MLflow's own client says what is wrong
    except OSError as exc:
        return f"dropped the request ({exc.strerror or type(exc).__name__})"
    finally:
        sock.close()
