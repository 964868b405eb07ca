"""The Ray dashboard of the session's cluster (started with the same ray.init arguments as
orchestrator.sweep.cluster.connect uses for a local cluster: dashboard_host="127.0.0.1") listens
on 127.0.0.1 only, checked on the listening sockets.

The session's cluster keeps token authentication on, so the dashboard's API wants the token;
every other Ray port of it is checked in tests/orchestrator/sweep/test_ray_auth.py; the MLflow
UI's sockets in tests/orchestrator/ui/test_fault_loopback.py.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def listening(processes: list[psutil.Process]) -> list[tuple[str, int, int]]:
    """(ip, port, pid) of every listening TCP socket of these processes."""
    pids = {p.pid for p in processes}
    return [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]  # fmt: skip


def _cmdline(p: psutil.Process) -> list[str]:
    """The command line, or [] for a process that exited (or is a zombie) while we looked."""
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def test_ray_dashboard_listens_on_loopback_only(ray_cluster):
    import ray

    url = ray._private.worker.get_dashboard_url()
    host, port = url.rsplit(":", 1)
    assert host == "127.0.0.1", url
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text()  # tests/conftest.py's
    request = urllib.request.Request(f"http://{url}/api/version",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    ours = psutil.Process().children(recursive=True)  # this session's cluster only
    dashboard = [p for p in ours if "dashboard/dashboard.py" in " ".join(_cmdline(p))]
    assert len(dashboard) == 1 and "--host=127.0.0.1" in dashboard[0].cmdline()
    on_port = [(ip, p) for ip, p, _ in listening(ours) if p == int(port)]
    assert on_port and all(ip == "127.0.0.1" for ip, _ in on_port), on_port
