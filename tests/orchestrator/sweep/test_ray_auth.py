"""Nobody else gets in: the local Ray instance the tool starts (orchestrator.sweep.cluster.
start_local, which also starts the pytest session's cluster) keeps token authentication on and
listens on 127.0.0.1 only.

- A driver without the token (another HOME, no token variables) reaching the GCS is refused with
  Ray's own authentication error, which the tool reports in one line; a client with the token
  connects.
- Every listening socket of every process of that instance is on 127.0.0.1 (gRPC's IPv6 sockets
  as ::ffff:127.0.0.1, the same address).
- The token the tool writes when there is none is readable by its user only; RAY_AUTH_MODE set
  to anything but token is refused in one line before Ray starts.
- Drivers starting at once on a machine without a token all end up with the same one.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import psutil
import pytest

from orchestrator.spec import SpecError
from orchestrator.sweep.cluster import LOOPBACK_ENV, ensure_local_token
from tests.processes_at_once import results_of

CLIENT = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(f"CONNECTED {ray.cluster_resources()['CPU']:g} CPUs")
"""
DRIVER = """
import sys
from orchestrator.spec import SpecError
from orchestrator.sweep.cluster import join
try:
    join(sys.argv[1])
except SpecError as exc:
    print(f"REFUSED {exc}")
"""
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def client(code: str, address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # LOOPBACK_ENV keeps 127.0.0.1 in the address (Ray would turn it into the outward IP,
    # where nothing of this instance listens, and the refusal would not be Ray's check);
    # the tool's join() does the same itself
    env = {**env, LOOPBACK_ENV: "0"}
    return subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip


@pytest.mark.slow
def test_a_client_without_the_token_is_refused_with_it_connects(ray_cluster, tmp_path):
    assert ray_cluster.startswith("127.0.0.1:"), ray_cluster
    stranger = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    stranger["HOME"] = str(tmp_path)  # no ~/.ray/auth_token there
    refused = client(DRIVER, ray_cluster, stranger)  # a driver of the tool's, joining
    assert "Unauthenticated" in refused.stderr and "InvalidAuthToken" in refused.stderr, (
        refused.stderr[-2000:]
    )  # Ray's own refusal, then the tool's one line
    (line,) = [ln for ln in refused.stdout.splitlines() if ln.startswith("REFUSED")]
    assert line.startswith(f"REFUSED --address: {ray_cluster!r}: Failed to connect"), line
    assert "needs RAY_AUTH_MODE=token here and its token in RAY_AUTH_TOKEN" in line, line
    assert not (tmp_path / ".ray").exists()  # a client never makes a token of its own

    friend = client(CLIENT, ray_cluster, dict(os.environ))  # RAY_AUTH_MODE=token, the token file
    assert "CONNECTED 2 CPUs" in friend.stdout, friend.stdout + friend.stderr[-2000:]


@pytest.mark.slow
def test_every_ray_port_of_the_local_instance_is_on_loopback(ray_cluster):
    ours = psutil.Process().children(recursive=True)  # this session's instance only
    names = {p.pid: p.name() for p in ours}
    assert any(n == "gcs_server" for n in names.values()), names
    assert any(n == "raylet" for n in names.values()), names
    sockets = [(c.laddr.ip, c.laddr.port, names[c.pid])
               for c in psutil.net_connections(kind="tcp")
               if c.status == psutil.CONN_LISTEN and c.pid in names]  # fmt: skip
    assert {n for _, _, n in sockets} >= {"gcs_server", "raylet"}, sockets
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _, _ in sockets), sockets


def test_the_token_written_is_private(tmp_path, monkeypatch):
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = ensure_local_token()
    assert path == tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert ensure_local_token() == path and path.read_text() == token  # made once, then reused
    path.write_text("")
    path.chmod(0o644)  # an empty file someone left: replaced by a new, private token
    assert ensure_local_token() == path and len(path.read_text()) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() != token
    assert sorted(p.name for p in path.parent.iterdir()) == ["auth_token"]  # nothing staged left

    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere" / "token"))
    assert ensure_local_token() == tmp_path / "elsewhere" / "token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    assert ensure_local_token() is None  # Ray reads the variable itself


@pytest.mark.parametrize("mode", ["disabled", "k8s"])
def test_auth_mode_other_than_token_is_refused(mode, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with pytest.raises(SpecError) as err:
        ensure_local_token()
    assert str(err.value).startswith(f"RAY_AUTH_MODE: {mode!r}: the local Ray instance")
    assert "\n" not in str(err.value)


def test_a_local_sweep_without_token_auth_is_refused_before_anything(monkeypatch, tmp_path):
    from orchestrator.spec import load_spec
    from orchestrator.sweep.run import preflight
    from tests.paths import REPO

    spec = load_spec(REPO / "experiments" / "smoke.yaml", [], cwd=tmp_path, gpus_available=0)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(SpecError, match="^RAY_AUTH_MODE: 'disabled': the local Ray instance"):
        preflight(spec, None, spec.storage.tracking_uri)
    assert not list(tmp_path.iterdir())  # no sweep directory, no MLflow store


def test_ray_local_as_an_address_is_the_tools_own_local_start(monkeypatch):
    from orchestrator.sweep.cluster import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address("local") is None and ray_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert ray_address(None) is None
    assert ray_address("127.0.0.2:6379") == "127.0.0.2:6379"


def _first_token(home: str, barrier, out) -> None:
    # One driver of several starting at once on a machine with no token yet: the token it
    # would hand its Ray instance (read back right after ensure_local_token, as ray.init does).
    os.environ["HOME"] = home
    barrier.wait()
    out.put(ensure_local_token().read_text())


@pytest.mark.slow
def test_drivers_starting_at_once_share_one_token(tmp_path, monkeypatch):
    # Two sweeps started together on a fresh machine: each made and read the token file, and
    # one could read its own token while the other overwrote it; then one instance's GCS had a
    # token its later workers, reading the file again, no longer matched.
    import multiprocessing

    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    fork = multiprocessing.get_context("fork")
    drivers = 8
    for round_ in range(40):
        home = tmp_path / f"home{round_}"
        home.mkdir()
        barrier = fork.Barrier(drivers)
        seen = results_of(fork, _first_token, [(str(home), barrier)] * drivers, timeout=60)
        final = (home / ".ray" / "auth_token").read_text()
        assert len(final) == 64 and seen == [final] * drivers, (round_, seen, final)


OTHER_INSTANCE = """
import sys, time
from orchestrator.sweep.cluster import start_local
start_local(1, 0)
print("UP", flush=True)
time.sleep(600)
"""
NESTED = """
import sys, ray
from orchestrator.sweep.cluster import join

@ray.remote(num_cpus=0)
class Watcher:  # detached and started by an actor, as Ray Train's PlacementGroupCleaner is
    def state_of(self, actor_id):
        from ray.util.state import get_actor
        return get_actor(actor_id, timeout=20).state

@ray.remote(num_cpus=0)
class Controller:
    def watched(self):
        me = ray.get_runtime_context().get_actor_id()
        watcher = Watcher.options(lifetime="detached").remote()
        try:
            return ray.get(watcher.state_of.remote(me))
        finally:
            ray.kill(watcher)

join(sys.argv[1])
print("STATE", ray.get(Controller.remote().watched.remote()))
"""


@pytest.mark.slow
def test_a_joined_sweep_s_actors_find_their_cluster_beside_another(ray_cluster, tmp_path):
    # Two Ray instances on one host: Ray's state API, called with no address inside a detached
    # actor (Train's placement-group cleaner asks it whether its controller lives), could not
    # choose between them, so the cleaner never freed a stopped trial's placement group.
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "other_token")}
    other = subprocess.Popen([sys.executable, "-c", OTHER_INSTANCE], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "UP"
        done = subprocess.run([sys.executable, "-c", NESTED, ray_cluster],
                              capture_output=True, text=True, timeout=180)  # fmt: skip
    finally:
        other.terminate()
        other.wait(timeout=60)
    assert "STATE ALIVE" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
