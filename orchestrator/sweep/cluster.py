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

    address = address or os.environ.get("RAY_ADDRESS") or None
    started = False
    if not ray.is_initialized():
        if address is None:
            # A private single-machine cluster: no token file needed.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(
                address="local",
                num_cpus=os.cpu_count(),
                num_gpus=_cuda_count(),
                include_dashboard=True,  # under Train V2 it frees a stopped trial's resources
                dashboard_host="127.0.0.1",
                log_to_driver=log_to_driver,
            )
        else:
            ray.init(address=address, log_to_driver=log_to_driver)
        started = True
    try:
        resources = ray.cluster_resources()
        want_gpu = spec.resources.gpus_per_worker > 0
        if want_gpu and resources.get("GPU", 0) < spec.resources.gpus_per_worker:
            raise SpecError(
                "resources.gpus_per_worker",
                [f"asks for {spec.resources.gpus_per_worker} GPU per worker but the Ray cluster has "
                 f"{resources.get('GPU', 0):g}; set resources.gpus_per_worker=0"],
            )  # fmt: skip
        yield resources
    finally:
        if started:
            ray.shutdown()


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
