"""Ray for a sweep: a local instance sized to this machine, or an existing cluster to join."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

from orchestrator.spec import ExperimentSpec, SpecError


@contextlib.contextmanager
def connect(
    address: str | None, spec: ExperimentSpec, *, log_to_driver: bool = False
) -> Iterator[dict]:
    """Yield the cluster's resources. Starts a local Ray (dashboard on 127.0.0.1) when no address
    is given and none is running in this process; leaves an already-initialised Ray alone."""
    import ray

    address = ray_address(address)
    started = False
    if not ray.is_initialized():
        if address is None:
            # A private single-machine cluster: no token file needed.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(
                address="local",
                num_cpus=local_resources()["CPU"],
                num_gpus=local_resources()["GPU"],
                include_dashboard=True,  # under Train V2 it frees a stopped trial's resources
                dashboard_host="127.0.0.1",
                log_to_driver=log_to_driver,
            )
        else:
            ray.init(address=address, log_to_driver=log_to_driver)
        started = True
    try:
        resources = ray.cluster_resources()
        check_fits(spec, resources, "the Ray cluster")
        yield resources
    finally:
        if started:
            ray.shutdown()


def ray_address(address: str | None) -> str | None:
    """The cluster to join: --address, else $RAY_ADDRESS; None: start a local one."""
    return address or os.environ.get("RAY_ADDRESS") or None


def local_resources() -> dict:
    """What a local Ray instance started here has: every CPU and GPU of this machine."""
    return {"CPU": os.cpu_count() or 1, "GPU": _cuda_count()}


def check_fits(spec: ExperimentSpec, resources: dict, where: str) -> None:
    """A SpecError when one trial's workers ask for more CPUs or GPUs than `where` has in all:
    Tune would wait for them for ever."""
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


def max_concurrent(spec: ExperimentSpec, resources: dict) -> int:
    """The spec's max_concurrent_trials, or as many trials as the cluster's CPUs/GPUs hold."""
    if spec.max_concurrent_trials is not None:
        return spec.max_concurrent_trials
    r = spec.resources
    fits = [math.floor(resources.get("CPU", 1) / (r.workers_per_trial * r.cpus_per_worker) + 1e-9)]
    if r.gpus_per_worker:
        fits.append(
            math.floor(resources.get("GPU", 0) / (r.workers_per_trial * r.gpus_per_worker) + 1e-9)
        )
    return max(1, min(fits))


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
