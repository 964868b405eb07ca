"""Ray for a sweep: a private local instance on this machine, or an existing cluster to join.

The local instance keeps Ray's token authentication on (the token from Ray's standard places,
made once when there is none) and puts every Ray server on 127.0.0.1. Joining a cluster uses
its token from the same places: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token, read by
Ray when RAY_AUTH_MODE=token (docs/cluster.md).

No credential travels in a runtime_env: Ray's runtime_env agent writes every runtime_env it
sets up, in plain text, to the session's runtime_env_agent.log. While connected, Tune does not
copy the driver's AWS credentials into its trial actors' runtime_env (as it otherwise does);
processes of the local instance inherit the driver's environment, and the nodes of a joined
cluster read their own (docs/cluster.md)."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from orchestrator.spec import ExperimentSpec, SpecError

# Ray is imported inside the functions that call it (heavy): the resource checks and names here
# are used without it.
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
ADDRESS_ENV = "RAY_ADDRESS"
# "0": Ray takes 127.0.0.1 as this node's address (binding its gRPC servers to it) and keeps
# 127.0.0.1 in an address; otherwise it replaces both with the machine's outward IP.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Variables Ray may copy from the driver into a runtime_env that hold secrets (Tune's
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_SECURITY_TOKEN).
SECRET_ENV_RE = re.compile(r"(SECRET|TOKEN|PASSWORD|_KEY)", re.IGNORECASE)


@contextlib.contextmanager
def connect(
    address: str | None, spec: ExperimentSpec, *, log_to_driver: bool = False
) -> Iterator[dict]:
    """Yield the cluster's resources. Starts a local Ray (start_local) when no address is given
    and none is running in this process; leaves an already-initialised Ray alone."""
    import ray

    address = ray_address(address)
    started = False
    if not ray.is_initialized():
        if address is None:
            cpus_gpus = local_resources()
            start_local(cpus_gpus["CPU"], cpus_gpus["GPU"], log_to_driver=log_to_driver)
        else:
            join(address, log_to_driver=log_to_driver)
        started = True
    try:
        resources = ray.cluster_resources()
        check_fits(spec, resources, "the Ray cluster")
        with secrets_kept_out_of_tune_actors():
            yield resources
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def secrets_kept_out_of_tune_actors() -> Iterator[None]:
    """For the block, Tune copies no secret variable (SECRET_ENV_RE: the AWS keys and session
    tokens) from this process into its trial actors' runtime_env, where Ray's runtime_env agent
    would log it, and every Train controller and worker would inherit it, in plain text."""
    from ray.tune.execution import class_cache

    propagated = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = {n for n in propagated if not SECRET_ENV_RE.search(n)}
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = propagated


def start_local(num_cpus: int, num_gpus: int, *, log_to_driver: bool = False) -> dict:
    """Start a private Ray instance on this machine and connect to it; returns its address_info.
    Token authentication on (a SpecError when RAY_AUTH_MODE says otherwise), every Ray server
    (GCS, raylet, object manager, workers, dashboard and its agents) on 127.0.0.1."""
    import ray

    ensure_local_token()
    with loopback_node():
        context = ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=True,  # under Train V2 it frees a stopped trial's resources
            dashboard_host="127.0.0.1",
            log_to_driver=log_to_driver,
        )
    return context.address_info


def join(address: str, *, log_to_driver: bool = False) -> None:
    """Connect to the cluster at `address`; a SpecError in one line when Ray refuses (no token
    found, or the cluster did not accept this one)."""
    import ray
    from ray.exceptions import AuthenticationError

    on_loopback = _host(address) in LOOPBACK_HOSTS  # a cluster of this machine's, on 127.0.0.1
    # Every process of this job (Tune's trial actors, Train's controllers and the detached
    # PlacementGroupCleaner they start) gets the cluster's address: Ray's state API, which the
    # cleaner calls to see whether its controller is alive, otherwise looks the cluster up on
    # its host and fails where two Ray instances run there; the cleaner then never frees the
    # placement group of a trial whose driver stopped, and later trials wait for it forever.
    gcs = "://" not in address and address != "auto"  # HOST:PORT, not a ray:// client address
    runtime_env = {"env_vars": {ADDRESS_ENV: address}} if gcs else None
    try:
        with loopback_node() if on_loopback else contextlib.nullcontext():
            ray.init(address=address, log_to_driver=log_to_driver, runtime_env=runtime_env)
    except AuthenticationError as exc:
        raise SpecError("--address", [f"{address!r}: {exc}"]) from None
    except ConnectionError as exc:
        raise SpecError("--address", [f"{address!r}: {exc}; {_auth_hint()}"]) from None


def ensure_local_token() -> Path | None:
    """Make sure a local Ray instance starts with token authentication and has a token: the
    one in RAY_AUTH_TOKEN (returns None), else the file RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
    names, written once (readable by this user only) when it is missing or empty; returns it.
    RAY_AUTH_MODE set to anything but token is refused (check_local_auth_mode)."""
    check_local_auth_mode()
    if os.environ.get(TOKEN_ENV):
        return None
    path = Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token")
    if _has_token(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Drivers starting at once on a machine without a token make one between them: the first
    # to hold the folder's lock writes it, the others find it there.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not _has_token(path):
            write_token(path)
    finally:
        os.close(fd)  # releases the lock
    return path


def _has_token(path: Path) -> bool:
    return path.is_file() and bool(path.read_text().strip())


def check_local_auth_mode() -> None:
    """A SpecError when RAY_AUTH_MODE asks a local Ray instance for anything but token
    authentication (checked before a sweep creates anything)."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None and mode.lower() != "token":
        raise SpecError(
            AUTH_MODE_ENV,
            [f"{mode!r}: the local Ray instance sla-sweep starts keeps token authentication on; "
             f"unset {AUTH_MODE_ENV} (or set it to token), or join a cluster of your own with "
             "--address"],
        )  # fmt: skip


def write_token(path: Path) -> None:
    """A new Ray token at `path`, mode 0600 from its creation (Ray's own `ray get-auth-token
    --generate` leaves it readable by everyone), put in place whole: a reader sees the old
    file or the new one, never a part."""
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # 256 bits, what Ray's own generator makes
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Inside: Ray takes 127.0.0.1 as this node's address, so the servers ray.init starts bind
    to it only, and an address on 127.0.0.1 stays on it (Ray otherwise turns 127.0.0.1 into the
    machine's outward IP, even when given as --node-ip-address). Ray's switch for it is its
    single-machine mode, read from the environment by every Ray process started inside (they
    keep it) and from ray_constants by this one; both are restored afterwards."""
    from ray._private import ray_constants

    saved_env, saved = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def _host(address: str) -> str:
    """The host of a Ray address: HOST:PORT, ray://HOST:PORT, [IPV6]:PORT or HOST."""
    rest = address.partition("://")[2] or address
    rest = rest.rstrip("/")
    if rest.startswith("["):
        return rest[: rest.find("]") + 1]
    return rest.rpartition(":")[0] or rest


def _auth_hint() -> str:
    where = f"{TOKEN_ENV}, {TOKEN_PATH_ENV} or ~/.ray/auth_token"
    if (os.environ.get(AUTH_MODE_ENV) or "").lower() == "token":
        return f"if it has token authentication, the token found here ({where}) is not its own"
    return (
        f"a cluster with token authentication needs {AUTH_MODE_ENV}=token here and its token "
        f"in {where}"
    )


def ray_address(address: str | None) -> str | None:
    """The cluster to join: --address, else $RAY_ADDRESS; None: start a local one (also for
    Ray's "local", so that it gets start_local's token and loopback binding)."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    return None if address == "local" else address


def local_resources() -> dict:
    """What a local Ray instance started here has: every CPU and GPU of this machine."""
    return {"CPU": os.cpu_count() or 1, "GPU": _cuda_count()}


def check_fits(spec: ExperimentSpec, resources: dict, where: str) -> None:
    """A SpecError when one trial's workers ask for more CPUs, GPUs or custom resources than
    `where` has in all: Tune would wait for them for ever."""
    r = spec.resources
    cpus, gpus = r.workers_per_trial * r.cpus_per_worker, r.workers_per_trial * r.gpus_per_worker
    have_cpu, have_gpu = resources.get("CPU", 0), resources.get("GPU", 0)
    if r.gpus_per_worker > 0 and gpus > have_gpu + 1e-9:
        raise SpecError(
            "resources",
            [f"a trial needs {gpus:g} GPUs (workers_per_trial {r.workers_per_trial} x "
             f"gpus_per_worker {r.gpus_per_worker:g}) but {where} has {have_gpu:g}; set "
             "resources.gpus_per_worker=0 or join a cluster with GPUs"],
        )  # fmt: skip
    if cpus > have_cpu + 1e-9:
        raise SpecError(
            "resources",
            [f"a trial needs {cpus:g} CPUs (workers_per_trial {r.workers_per_trial} x "
             f"cpus_per_worker {r.cpus_per_worker:g}) but {where} has {have_cpu:g}; lower "
             "resources.cpus_per_worker or resources.workers_per_trial"],
        )  # fmt: skip
    for name, amount in r.custom_per_worker.items():
        need, have = r.workers_per_trial * amount, resources.get(name, 0)
        if need > have + 1e-9:
            raise SpecError(
                "resources",
                [f"a trial needs {need:g} {name} (workers_per_trial {r.workers_per_trial} x "
                 f"custom_per_worker.{name} {amount:g}) but {where} has {have:g}; start nodes "
                 f"with it (ray start --resources '{{\"{name}\": N}}') and join them with "
                 "--address, or leave it out of resources.custom_per_worker"],
            )  # fmt: skip


def max_concurrent(spec: ExperimentSpec, resources: dict) -> int:
    """The spec's max_concurrent_trials, or as many trials as the cluster's CPUs, GPUs and
    custom resources hold."""
    if spec.max_concurrent_trials is not None:
        return spec.max_concurrent_trials
    r = spec.resources
    fits = [math.floor(resources.get("CPU", 1) / (r.workers_per_trial * r.cpus_per_worker) + 1e-9)]
    if r.gpus_per_worker:
        fits.append(
            math.floor(resources.get("GPU", 0) / (r.workers_per_trial * r.gpus_per_worker) + 1e-9)
        )
    for name, amount in r.custom_per_worker.items():
        fits.append(math.floor(resources.get(name, 0) / (r.workers_per_trial * amount) + 1e-9))
    return max(1, min(fits))


def _cuda_count() -> int:
    import torch  # heavy: only when Ray starts here

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
