"""The Tune function trainable: one Tune trial = one Ray Train TorchTrainer run of the recipe.

The trial's own Tune actor only launches and waits (no CPUs of its own); the Train workers hold
the trial's CPUs/GPUs. Worker reports reach Tune through TuneReportCallback, with the persisted
checkpoint's path under "checkpoint_path". The Train run is named after the Tune trial id and
stored under the sweep directory, so rerunning a trial (resume, retry) continues from its last
checkpoint instead of starting over.

Ray Train is imported inside the functions (heavy: seconds, pandas and Ray Data with it): only the
trial's own actor builds a TorchTrainer, not the driver that imports this module for Tune.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray.tune

from orchestrator.storage import is_uri
from orchestrator.storage.records import trial_sla, trial_train


@dataclasses.dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares (from the ExperimentSpec), passed by tune.with_parameters."""

    train: dict[str, Any]
    fixed_sla: dict[str, Any]
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float
    num_to_keep: int
    max_failures: int
    # absolute, or a URI (s3://...): Ray changes the working directory of trials and workers
    train_storage: str
    worker_env: dict[str, str] = dataclasses.field(default_factory=dict)
    # Set in the trial's Tune actor before it builds the TorchTrainer: Ray Train's controller
    # takes its settings (RAY_TRAIN_*) from the process that calls fit().
    controller_env: dict[str, str] = dataclasses.field(default_factory=dict)
    # Where the first trial leaves the base model's val loss and samples for the others (absolute).
    reference_cache: str | None = None
    # A pipeline's encoded clips and captions (the manifest the driver wrote; absolute).
    encoded: str | None = None
    # Trials the sweep's own record (trials.json) has as finished, with their final metrics; a
    # resumed sweep does not rerun them even when Tune's experiment state, saved only now and
    # then, was older than the kill: it reports those metrics again (Tune needs its metric in a
    # trial's last result) and ends.
    finished: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    # Ray custom resources per worker (resources.custom_per_worker): where the workers may go.
    custom_per_worker: Mapping[str, float] = dataclasses.field(default_factory=dict)


def sweep_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """Tune function trainable: build the TorchTrainer for this trial and run it to the end."""
    # heavy (Ray Train, torch): imported in the trial's actor, once per actor
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.sweep.worker import train_loop_per_worker

    trainable_start = time.time()
    trial_id = ray.tune.get_context().get_trial_id()
    if trial_id in settings.finished:
        ray.tune.report(dict(settings.finished[trial_id]))
        return
    os.environ.update(settings.controller_env)
    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        resources["GPU"] = settings.gpus_per_worker
    resources.update(settings.custom_per_worker)
    trainer = _trainer_class()(
        train_loop_per_worker,
        train_loop_config={
            "train": trial_train(settings.train, config["trial"]),
            "sla": trial_sla(settings.fixed_sla, config["trial"]),
            "trainable_start": trainable_start,
            "reference_cache": settings.reference_cache,
            "encoded": settings.encoded,
        },
        scaling_config=ScalingConfig(
            num_workers=settings.workers_per_trial,
            use_gpu=settings.gpus_per_worker > 0,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=trial_id,
            storage_path=_storage_path(settings.train_storage),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.num_to_keep),
            failure_config=FailureConfig(max_failures=settings.max_failures),
            callbacks=[TuneReportCallback()],
            worker_runtime_env={"env_vars": dict(settings.worker_env)}
            if settings.worker_env
            else None,
        ),
    )
    trainer.fit()


def _trainer_class():
    """TorchTrainer less Ray Data's DatasetsCallback when the run has no datasets (ours never
    has: the recipe reads its own data). That callback starts a DatasetManager actor for every
    run even without datasets, one more process per trial importing Ray Data, on the trial's
    start-up path; without it the workers get no dataset shard provider, which only
    ray.train.get_dataset_shard (never called here) uses."""
    from ray.train.torch import TorchTrainer  # heavy (see the module docstring)
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class SweepTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return SweepTorchTrainer


def _storage_path(storage: str) -> str:
    """A directory made absolute; a URI as it is (Ray opens it with pyarrow in each process)."""
    return storage if is_uri(storage) else str(Path(storage).resolve())
