"""Is anything answering at the Ray address and the MLflow tracking URI? Asked once, with a short
timeout, before a sweep creates anything: ray.init waits for an absent cluster without end, and
MLflow retries an absent server for minutes before it says so."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from orchestrator.spec import SpecError

TIMEOUT_S = 3.0
RAY_PORTS = {"ray": 10001, "": 6379}  # Ray Client, and a GCS address without a port
DB_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_ray_address(address: str | None) -> None:
    """A SpecError when nothing accepts a connection at a cluster address (None, "auto" and
    "local" are not addresses of a remote cluster: Ray finds or starts the local one)."""
    if address is None or address in ("auto", "local"):
        return
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        host, port = rest.rstrip("/"), str(RAY_PORTS.get(scheme, 6379))
    problem = _connect_problem(host, int(port))
    if problem:
        raise SpecError(
            "--address",
            [f"no Ray cluster answers at {address!r} ({problem}); start one (ray start --head) "
             "or leave out --address and RAY_ADDRESS to run on this machine"],
        )  # fmt: skip


def check_tracking_uri(uri: str) -> None:
    """A SpecError when the MLflow server or database of a tracking URI does not accept a
    connection (a sqlite store is a local file: nothing to reach)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme not in DB_PORTS or not parts.hostname:
        return
    problem = _connect_problem(parts.hostname, parts.port or DB_PORTS[scheme])
    if problem:
        shown = f"{scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        raise SpecError(
            "storage.tracking_uri",
            [f"nothing answers at {shown} ({problem}); start the MLflow server or database, "
             "or leave storage.tracking_uri out for the local sqlite store"],
        )  # fmt: skip


def _connect_problem(host: str, port: int) -> str | None:
    """Why a TCP connection to host:port fails within TIMEOUT_S; None when it succeeds."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            return None
    except TimeoutError:
        return f"no answer within {TIMEOUT_S:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
