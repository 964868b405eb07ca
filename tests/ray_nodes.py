"""A real two-node Ray cluster on this machine for tests, every server on a loopback address:
the head (`ray start --head`, 1 CPU: where a driver connects and a trial's Tune actor and Train
controller run) on 127.0.0.2, and a worker node (`ray start --address`, 2 CPUs and the custom
resource trial_node: 2, its own temp dir) on 127.0.0.3. Token authentication is on, with the
token the environment names (tests/conftest.py's session token file).

    with ray_nodes() as cluster:          # or the `two_nodes` fixture (module scope)
        cluster.address                   # "127.0.0.2:PORT", for --address
        cluster.kill_worker()             # SIGKILL the worker node's process group: it dies
        cluster.start_worker()            # a new worker node, same resources, on 127.0.0.4

Each node is one `ray start --block` in its own process group; leaving the block ends both
groups (SIGTERM, then SIGKILL) and checks that no process of either is left. `ray stop` is not
used: it stops every Ray instance of this user on the machine, the session's cluster too.
Distinct 127.0.0.x addresses, not 127.0.0.1 twice: Ray turns 127.0.0.1 given to `ray start`
into the machine's outward IP, and distinct node IPs tell the nodes apart."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from orchestrator.sweep.cluster import LOOPBACK_ENV

HEAD_IP, WORKER_IPS = "127.0.0.2", ("127.0.0.3", "127.0.0.4", "127.0.0.5")
TRIAL_RESOURCE = "trial_node"
START_TIMEOUT_S = 180


@dataclasses.dataclass
class Node:
    ip: str
    temp_dir: Path
    proc: subprocess.Popen
    log: Path

    def processes(self) -> list[psutil.Process]:
        """The node's live processes: its `ray start` and everything under it."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


@dataclasses.dataclass
class TwoNodes:
    address: str
    dashboard: str  # http://HOST:PORT, for ray.util.state
    head: Node
    workers: list[Node]  # the live one last; killed ones stay listed
    root: Path

    @property
    def worker(self) -> Node:
        return self.workers[-1]

    def kill_worker(self) -> None:
        """A node failure: SIGKILL every process of the current worker node at once."""
        _kill_group(self.worker.proc, signal.SIGKILL)

    def start_worker(self) -> Node:
        """A new worker node with the same resources, on the next loopback address."""
        ip = WORKER_IPS[len(self.workers)]
        self.workers.append(_start_worker(self.root, ip, self.address))
        wait_for_nodes(self.dashboard, {HEAD_IP, ip})
        return self.worker


def _free_port(host: str = HEAD_IP) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    """A node's environment: the session's token; no single-machine switch (a worker node would
    refuse to start) and no RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items() if k not in (LOOPBACK_ENV, "RAY_ADDRESS")}
    assert env.get("RAY_AUTH_MODE") == "token" and env.get("RAY_AUTH_TOKEN_PATH"), "conftest.py"
    return env


def _ray_start(temp_dir: Path, args: list[str]) -> tuple[subprocess.Popen, Path]:
    temp_dir.mkdir(parents=True)
    log = temp_dir.with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["ray", "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}",
             "--num-gpus=0", "--object-store-memory=100000000",
             f"--dashboard-agent-listen-port={_free_port()}", *args],
            env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_group(proc, signal.SIGKILL)
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, log


def _start_worker(root: Path, ip: str, address: str) -> Node:
    temp_dir = root / f"worker-{ip.rsplit('.', 1)[1]}"
    proc, log = _ray_start(temp_dir, [
        f"--address={address}", f"--node-ip-address={ip}", "--num-cpus=2",
        f"--resources={json.dumps({TRIAL_RESOURCE: 2})}",
    ])  # fmt: skip
    return Node(ip, temp_dir, proc, log)


def wait_for_nodes(dashboard: str, ips: set[str], timeout_s: float = START_TIMEOUT_S) -> None:
    """Until exactly the nodes at `ips` are alive (the GCS has marked the others dead)."""
    from ray.util.state import list_nodes

    deadline, alive = time.monotonic() + timeout_s, set()
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the API server still starting
            alive = {n.node_ip for n in list_nodes(address=dashboard) if n.state == "ALIVE"}
            if alive == ips:
                return
        time.sleep(1)
    raise TimeoutError(f"alive nodes {sorted(alive)}, expected {sorted(ips)}")


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _stop(nodes: list[Node]) -> None:
    """SIGTERM every node's process group at once (`ray start --block` then stops its
    processes), SIGKILL what is left of each after 5 s in all (some of a node's processes
    outlive a SIGTERM by 20 s and more), and reap the `ray start` processes."""
    for node in nodes:
        _kill_group(node.proc, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for node in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for node in nodes:
        left = node.processes()
        _kill_group(node.proc, signal.SIGKILL)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        node.proc.wait(timeout=20)


def leftovers(root: Path) -> list[str]:
    """Live processes whose command line names a node's temp dir (Ray's own processes do)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(root) in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(f"{p.info['pid']} {cmd[:200]}")
    return out


@contextlib.contextmanager
def ray_nodes() -> Iterator[TwoNodes]:
    # short: Ray's socket paths under the temp dir must fit in 107 bytes
    root = Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp"))
    port, dash_port = _free_port(), _free_port()
    proc, log = _ray_start(root / "head", [
        "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}", "--num-cpus=1",
        "--include-dashboard=true", f"--dashboard-host={HEAD_IP}", f"--dashboard-port={dash_port}",
        f"--ray-client-server-port={_free_port()}",
    ])  # fmt: skip
    address = f"{HEAD_IP}:{port}"
    cluster = TwoNodes(address, f"http://{HEAD_IP}:{dash_port}",
                       Node(HEAD_IP, root / "head", proc, log), [], root)  # fmt: skip
    try:
        cluster.start_worker()
        yield cluster
    finally:
        _stop([*cluster.workers, cluster.head])
        time.sleep(1)
        left = leftovers(root)
        assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    with ray_nodes() as cluster:
        yield cluster
