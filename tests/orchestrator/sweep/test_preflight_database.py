"""A database tracking URI whose server accepts a connection but never speaks is one line within
the answer bound, before anything starts (SQLAlchemy's connect would hang on it); a server that
answers its protocol's first message passes. Real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from orchestrator.spec import SpecError
from orchestrator.sweep.preflight import DB_PROBES, check_tracking_answers


class Peer:
    """A TCP listener on 127.0.0.1 that, per connection, reads `read` bytes (recording them) and
    then sends `reply` (nothing: silent until closed)."""

    def __init__(self, read: int, reply: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.read, self.reply, self.received, self.conns = read, reply, b"", []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            while len(self.received) < self.read:
                chunk = conn.recv(self.read - len(self.received))
                if not chunk:
                    break
                self.received += chunk
            if self.reply:
                conn.sendall(self.reply)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2", "mysql"])
def test_a_silent_database_is_one_line_within_the_bound(scheme):
    peer = Peer(read=0, reply=b"")
    try:
        uri = f"{scheme}://user:secret@127.0.0.1:{peer.port}/mlflow"
        started = time.monotonic()
        with pytest.raises(SpecError) as caught:
            check_tracking_answers(uri, timeout_s=1.0)
        waited = time.monotonic() - started
    finally:
        peer.close()
    message = str(caught.value)
    name = scheme.split("+")[0]
    assert f"the database at {name}://127.0.0.1:{peer.port} accepted a connection" in message
    assert "did not answer" in message and f"a {name} server" in message
    assert "secret" not in message and "user" not in message
    assert 1.0 <= waited < 6.0


def test_a_postgresql_server_that_answers_the_ssl_request_passes():
    """PostgreSQL answers an SSLRequest with one byte ('N': no TLS) before anything else."""
    peer = Peer(read=8, reply=b"N")
    try:
        check_tracking_answers(f"postgresql://127.0.0.1:{peer.port}/mlflow", timeout_s=5.0)
        time.sleep(0.05)
    finally:
        peer.close()
    assert peer.received == DB_PROBES["postgresql"][1]
    assert int.from_bytes(peer.received[4:], "big") == 80877103  # the protocol's SSLRequest code


def test_a_mysql_server_that_greets_passes():
    peer = Peer(read=0, reply=b"\x4a\x00\x00\x00\x0a8.0.36\x00")  # a greeting packet's start
    try:
        check_tracking_answers(f"mysql://127.0.0.1:{peer.port}/mlflow", timeout_s=5.0)
    finally:
        peer.close()
    assert peer.received == b""  # the client waits for the server to speak first
