"""What must hold on this machine and at the tracking server before a sweep creates anything,
beside the TCP checks of orchestrator.sweep.reachable: the directories a sweep writes can be
written, a tracking URI's port is a number, and an MLflow server or a database that accepts a
connection also answers (within ANSWER_TIMEOUT_S; MLflow's own client retries a silent server for
minutes, and a silent database hangs SQLAlchemy's connect). Each is a SpecError, one line, before the base model is trained or Ray starts."""

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
# A database's first words: PostgreSQL answers an SSLRequest (length 8, code 80877103) with one
# byte; a MySQL server greets first, so nothing is sent. Other databases are not probed.
DB_PROBES = {"postgresql": (5432, (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")),
             "mysql": (3306, b"")}  # fmt: skip


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
    (http/https) or a PostgreSQL or MySQL database accepts a connection but sends nothing back
    within timeout_s (the database after its protocol's first message, DB_PROBES).
    (Nothing accepting a connection at all is orchestrator.sweep.reachable's to say.)"""
    problem = port_problem(tracking_uri)
    if problem:
        raise SpecError("storage.tracking_uri", [f"{shown(_public(tracking_uri))} {problem}"])
    parts = urlsplit(tracking_uri)
    scheme = parts.scheme.lower().split("+")[0]  # postgresql+psycopg2: the database's name
    if not parts.hostname or (scheme not in HTTP_PORTS and scheme not in DB_PROBES):
        return
    if scheme in HTTP_PORTS:
        port = parts.port or HTTP_PORTS[scheme]
        probe = f"GET /health HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\n"
        probe, what = (probe + "Connection: close\r\n\r\n").encode(), "the MLflow server"
        kind = "an MLflow server"
    else:
        port, probe = parts.port or DB_PROBES[scheme][0], DB_PROBES[scheme][1]
        what, kind = "the database", f"a {scheme} server"
    server = f"{scheme}://{parts.hostname}:{port}"  # never a user:password@
    started = time.monotonic()
    why = _unanswered(parts.hostname, port, probe, scheme == "https", timeout_s)
    if why:
        waited = time.monotonic() - started
        raise SpecError(
            "storage.tracking_uri",
            [f"{what} at {server} accepted a connection but {why} within "
             f"{waited:.1f} s; check that it is {kind} and that it "
             "is not stuck, or leave storage.tracking_uri out for the local sqlite store"],
        )  # fmt: skip


def _public(uri: str) -> str:
    """`uri` without a user:password@ (for messages)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", uri)


def _unanswered(host: str, port: int, probe: bytes, tls: bool, timeout_s: float) -> str | None:
    """Why host:port sent nothing back within timeout_s after the probe (nothing sent for an
    empty one); None when any reply came (any status, even an error: only silence is refused)."""
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
        if probe:
            sock.sendall(probe)
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
