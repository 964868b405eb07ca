"""What Tune gets for a sweep's trials: the trainable with its resources, the settings every
trial gets, the callbacks, whether trial actors are reused, how many trials a complete run has.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from ray import tune

from orchestrator.spec import ExperimentSpec
from orchestrator.spec.recipe import build_train_config
from orchestrator.storage.records import trial_sla
from orchestrator.storage.sweep_files import base_store
from orchestrator.storage.sweep_place import SweepPlace
from orchestrator.storage.sync import SyncCallback
from orchestrator.sweep import search_space
from orchestrator.sweep.progress import SweepProgress
from orchestrator.sweep.trainable import TrialSettings, sweep_trial
from sla_kernel_glue import SLAConfig

# Every Ray head node has 1 of this resource; each trial actor takes this share of it (up to
# 1000 trials at once).
HEAD_NODE_RESOURCE = "node:__internal_head__"
TRIAL_ACTOR_SHARE = 0.001

# How often a trial's Train controller polls its workers (Ray's default: every 2 s). A worker's
# ray.train.report blocks until the controller has taken the one before, and the trial ends
# only at the poll after its last one, so the default costs up to 2 s per report and per trial.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = "0.5"

# Ray Train's preemption watcher: one more actor process per trial, watching for an autoscaler
# draining the node. The local instance of one machine is never drained, so there it is off
# (unless set): a smoke trial's Ray start-up went from 21 s to 16-18 s on 2 CPUs. On a joined
# cluster Ray's default (on) stays.
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def reuse_trial_actors(spec: ExperimentSpec) -> bool:
    """Whether a finished trial's Tune actor runs the next trial (saves its process start and
    imports, most of the gap between trials). Only without a scheduler: a trial the scheduler
    stops early is still inside TorchTrainer.fit(), so Tune could not reset its actor in time
    and would fail the next trial instead."""
    return spec.scheduler.name == "none"


def expected_trials(spec: ExperimentSpec) -> int:
    """How many trials a complete run of `spec` has (an interrupted one has fewer ended)."""
    if spec.search.algorithm == "optuna":
        return search_space.num_samples(spec)
    return len(search_space.expand_trials(spec)) * search_space.num_samples(spec)


def trial_settings(
    spec: ExperimentSpec, place: SweepPlace, *, encoded: str | None = None, local: bool = False
) -> TrialSettings:
    """What every trial gets. local: the sweep runs on this machine's own Ray instance (no
    --address), where Ray Train's preemption watcher is left off unless the user set it."""
    from orchestrator.recipe.base_model import BASE_STORE_ENV  # imports torch: heavy

    r = spec.resources
    env = {"OMP_NUM_THREADS": str(max(1, int(r.cpus_per_worker)))}
    if place.remote is not None:
        env[BASE_STORE_ENV] = base_store(spec)
    controller_env = {TRAIN_POLL_ENV: os.environ.get(TRAIN_POLL_ENV, TRAIN_POLL_S)}
    if local or PREEMPTION_WATCHER_ENV in os.environ:
        controller_env[PREEMPTION_WATCHER_ENV] = os.environ.get(PREEMPTION_WATCHER_ENV, "0")
    return TrialSettings(
        train=dict(spec.train),
        fixed_sla=spec.fixed_sla,
        workers_per_trial=r.workers_per_trial,
        cpus_per_worker=r.cpus_per_worker,
        gpus_per_worker=r.gpus_per_worker,
        custom_per_worker=dict(r.custom_per_worker),
        num_to_keep=spec.checkpoint.num_to_keep,
        max_failures=spec.failure.max_failures,
        train_storage=place.ray_storage("train"),
        reference_cache=place.ray_storage("base_reference"),
        encoded=encoded,
        worker_env=env,
        controller_env=controller_env,
    )


def quiet_tune_output() -> None:
    """Our progress lines replace Tune's tables: with the legacy reporter, verbose=0 is silent."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def tune_trainable(settings: TrialSettings):
    # The trial's Tune actor only waits on its TorchTrainer: no CPUs of its own (a bundle may not
    # be empty, hence the token memory request); the Train workers hold the trial's resources.
    # It lives on the head node (a sliver of the head's own node resource), and with it the
    # trial's Train controller (Ray Train puts that on its caller's node): a worker node that
    # dies takes only Train workers with it, which Ray Train restarts from the last checkpoint
    # (failure.max_failures); a trial actor on it would take the trial down, ERROR.
    fn = tune.with_parameters(sweep_trial, settings=settings)
    return tune.with_resources(fn, {"cpu": 0, "memory": 1, HEAD_NODE_RESOURCE: TRIAL_ACTOR_SHARE})


def tune_callbacks(spec: ExperimentSpec, place: SweepPlace, parent: str, settings: TrialSettings):
    """The progress callback (trials.json, MLflow), then, for a bucket, the upload of the files."""
    train_params = dataclasses.asdict(build_train_config(spec.train))
    progress = SweepProgress(
        place.local, spec.storage.tracking_uri, spec.name, parent,
        functools.partial(trial_sla, settings.fixed_sla), train_params,
        [f.name for f in dataclasses.fields(SLAConfig)],
    )  # fmt: skip
    return [progress] if place.remote is None else [progress, SyncCallback(place)]
