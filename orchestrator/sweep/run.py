"""Run or resume a sweep: Ray (local or joined), Tuner(...).fit(), then the report and MLflow.

A sweep directory (storage.results_dir/<name>-<time>) holds spec.yaml, sweep.json (MLflow ids),
trials.json (the driver's record of every trial), results.csv, pareto.png, tune/ (Tune's
experiment directory: Tune syncs it wholesale on restore, so nothing of ours lives in it),
train/<trial id>/checkpoint_* (the Ray Train runs) and base_reference/ (the base model's val loss
and samples, computed by the first trial and loaded by the others). With storage.results_dir a
URI the sweep is a prefix in a bucket: Ray writes tune/ and train/ there, the driver keeps its
own files in a working copy and uploads them (orchestrator.storage.sweep_place).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from orchestrator.spec import ExperimentSpec, SpecError
from orchestrator.spec.memory_plan import check_plan
from orchestrator.spec.recipe import build_train_config
from orchestrator.spec.sizes import memory_errors
from orchestrator.storage import StorageError, check_reachable, open_location
from orchestrator.storage.records import DONE, SPEC_FILE, STEP_KEY, SWEEP_FILE, load_rows
from orchestrator.storage.sweep_files import (  # noqa: F401 (find_sweep, read_sweep: run's API)
    TUNE_DIR,
    find_sweep,
    prepare_base_model,
    prepare_encoded_data,
    read_sweep,
)
from orchestrator.storage.sweep_place import STORAGE_KEY, SweepPlace, new_place, open_place
from orchestrator.sweep import search_space
from orchestrator.sweep.cluster import (
    check_fits,
    check_local_auth_mode,
    connect,
    local_resources,
    max_concurrent,
    ray_address,
)
from orchestrator.sweep.driver import driver_lock, open_store, stop_signals
from orchestrator.sweep.finish import SweepOutcome, finish
from orchestrator.sweep.preflight import check_tracking_answers, check_writable
from orchestrator.sweep.reachable import check_ray_address, check_tracking_uri
from orchestrator.sweep.tune_setup import (
    expected_trials,
    quiet_tune_output,
    reuse_trial_actors,
    trial_settings,
    tune_callbacks,
    tune_trainable,
)
from orchestrator.tracking.creds import without_credentials
from orchestrator.tracking.mlflow_log import sweep_recorder
from orchestrator.tracking.params import flat_params
from orchestrator.tracking.tags import SWEEP_TAG


def run_sweep(
    spec: ExperimentSpec, *, address: str | None = None, verbose: bool = False
) -> SweepOutcome:
    """Run every trial of `spec` and report; returns when Tune is done or interrupted (Ctrl-C,
    SIGTERM, SIGHUP). Unreachable services and resources no trial fits in are a SpecError
    before anything is created."""
    t0 = time.monotonic()
    spec = without_credentials(spec)  # a server URI's user:password@ into the environment
    address = ray_address(address)
    preflight(spec, address, spec.storage.tracking_uri)
    prepare_base_model(spec)
    t_encode = time.monotonic()
    encoded = prepare_encoded_data(spec)
    t_base = time.monotonic()
    with contextlib.ExitStack() as held:
        with connect(address, spec, log_to_driver=verbose) as cluster:
            t_ray = time.monotonic()
            place, parent = _start_sweep(spec, encoded)
            held.enter_context(driver_lock(place.local))
            held.enter_context(_runs_closed_on_error(place.local))
            quiet_tune_output()
            settings = trial_settings(spec, place, encoded=encoded, local=address is None)
            metric, mode = search_space.tune_metric(spec)
            tuner = tune.Tuner(
                tune_trainable(settings),
                param_space=search_space.param_space(spec),
                tune_config=tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    search_alg=search_space.search_alg(spec),
                    scheduler=search_space.scheduler(spec),
                    num_samples=search_space.num_samples(spec),
                    max_concurrent_trials=max_concurrent(spec, cluster),
                    reuse_actors=reuse_trial_actors(spec),
                ),
                run_config=tune.RunConfig(
                    name=TUNE_DIR,
                    storage_path=place.ray_storage(""),
                    callbacks=tune_callbacks(spec, place, parent, settings),
                    verbose=0,
                ),
            )
            stopped_by = _fit(tuner)
            t_fit = time.monotonic()
        timings = {"base_model_s": t_encode - t0, "encode_s": t_base - t_encode,
                   "ray_start_s": t_ray - t_base,
                   "fit_s": t_fit - t_ray}  # fmt: skip
        return finish(spec, place, timings, t0, stopped_by=stopped_by)


def preflight(spec: ExperimentSpec, address: str | None, tracking_uri: str) -> None:
    """What is bound to fail, found in seconds before anything is created (SpecError): a
    directory the sweep writes that cannot be written; a cluster address or tracking server
    nothing answers at, or a server that accepts a connection and never answers; when Ray would
    start here, a trial bigger than this machine (CPUs, GPUs, the memory estimate of
    orchestrator.spec.sizes). A joined cluster's CPUs and GPUs are checked once joined. A trial
    that asks for GPUs has its memory plan printed, and refused when it does not fit the GPU
    (orchestrator.spec.memory_plan), before the rest."""
    plan = check_plan(spec, local=address is None)
    if plan:
        print(plan, flush=True)
    check_writable(spec, tracking_uri)
    check_ray_address(address)
    check_tracking_answers(tracking_uri)  # its port first; then a server silent after connecting
    check_tracking_uri(tracking_uri)
    if spec.storage.remote:
        try:
            check_reachable(open_location(spec.storage.results_dir))
        except StorageError as exc:
            raise SpecError(spec.name, [str(exc)]) from None
    if address is None:
        check_local_auth_mode()
        check_fits(spec, local_resources(), "this machine")
        train = build_train_config(spec.train)
        gpu = spec.resources.gpus_per_worker > 0
        problems = [] if gpu else memory_errors(train, gpu=False)  # a GPU's: the plan above
        if problems:
            raise SpecError(spec.name, problems)


def _start_sweep(spec: ExperimentSpec, encoded: str | None) -> tuple[SweepPlace, str]:
    """The MLflow experiment (the store created under its lock), then the sweep directory with
    spec.yaml and sweep.json (uploaded, for a bucket), and the sweep's parent run."""
    recorder = open_store(spec.storage.tracking_uri, spec.name)
    place = new_place(spec.storage.results_dir, spec.name)
    sweep_dir = place.local
    spec_file = sweep_dir / SPEC_FILE
    spec_file.write_text(yaml.safe_dump(spec.source, sort_keys=False))
    parent = recorder.start_parent(sweep_dir, _parent_params(spec), spec_file)
    meta = {"name": spec.name, "tracking_uri": spec.storage.tracking_uri,
            "experiment_id": recorder.experiment_id, "parent_run_id": parent,
            "expected_trials": expected_trials(spec), "encoded": encoded}  # fmt: skip
    if place.remote is not None:
        meta[STORAGE_KEY] = place.uri
        recorder.set_tags(parent, {SWEEP_TAG: place.uri})
    (sweep_dir / SWEEP_FILE).write_text(json.dumps(meta, indent=1))
    try:
        place.push(strict=True)
    except StorageError as exc:
        raise SpecError(spec.name, [str(exc)]) from None
    print(f"[sla-sweep] sweep {place.uri}")
    print(
        f"[sla-sweep] MLflow: {spec.storage.tracking_uri} (experiment {spec.name!r}, run {parent})"
    )
    return place, parent


def _fit(tuner) -> int | None:
    """tuner.fit(), stopped by Ctrl-C, SIGTERM or SIGHUP as Tune stops for Ctrl-C (its state
    saved); a second one stops at once. The first stop signal seen (None: none, or one Ctrl-C,
    which Tune's own handler takes)."""
    with stop_signals() as received:
        tuner.fit()
    return received[0] if received else None


@contextlib.contextmanager
def _runs_closed_on_error(sweep_dir: Path) -> Iterator[None]:
    """An error that escapes the sweep (a third Ctrl-C during the report included) leaves no
    MLflow run RUNNING: the parent and its unfinished trials end FAILED (KILLED: interrupted)."""
    try:
        yield
    except SpecError:
        raise  # refused before anything ran (a service or cluster checked on resume)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):
            meta = json.loads((sweep_dir / SWEEP_FILE).read_text())
            recorder = sweep_recorder(sweep_dir, meta)
            recorder.end_running_children(status)
            recorder.finish_parent([], status=status)
        raise


def resume_sweep(
    sweep: Path | str, *, address: str | None = None, verbose: bool = False
) -> SweepOutcome:
    """Finish an interrupted sweep (a directory or a bucket URI): unfinished and errored trials
    run again, finished ones don't. Refused (SpecError) while another driver is alive on it."""
    t0 = time.monotonic()
    place = open_place(sweep)
    sweep_dir = place.local
    spec, meta = read_sweep(place)
    address = ray_address(address)
    with contextlib.ExitStack() as held:
        held.enter_context(driver_lock(sweep_dir))
        held.enter_context(_runs_closed_on_error(sweep_dir))
        preflight(spec, address, meta["tracking_uri"])
        print(f"[sla-sweep] resuming {place.uri}")
        with connect(address, spec, log_to_driver=verbose):
            t_ray = time.monotonic()
            quiet_tune_output()
            # what trials.json has as finished, with its final metrics: reported again (not run)
            # when Tune's own state, saved only now and then, still has the trial unfinished
            done = {t: {**row.metrics, STEP_KEY: row.step}
                    for t, row in load_rows(sweep_dir).items() if row.status in DONE}  # fmt: skip
            settings = trial_settings(
                spec, place, encoded=meta.get("encoded"), local=address is None
            )
            tuner = tune.Tuner.restore(
                place.ray_storage(TUNE_DIR),
                tune_trainable(dataclasses.replace(settings, finished=done)),
                resume_unfinished=True,
                resume_errored=True,
            )
            stopped_by = _fit(tuner)
            t_fit = time.monotonic()
        timings = {"ray_start_s": t_ray - t0, "fit_s": t_fit - t_ray}
        return finish(spec, place, timings, t0, stopped_by=stopped_by)


def _parent_params(spec: ExperimentSpec) -> dict[str, Any]:
    space = {
        p.field: (p.values[0] if p.kind == "fixed" else {p.kind: list(p.values)}) for p in spec.sla
    }
    searched = {p.field: {p.kind: list(p.values)} for p in spec.train_space}
    return {
        **flat_params("sla", space),
        **flat_params("", searched),
        **(
            {}
            if "train.objective" in searched
            else {"train.objective": spec.train.get("objective", "flow_matching")}
        ),
        "control": spec.control,
        "search.algorithm": spec.search.algorithm,
        "search.num_samples": spec.search.num_samples,
        "scheduler": spec.scheduler.name,
        "metric": spec.metric,
        "mode": spec.mode,
        **flat_params("resources", dataclasses.asdict(spec.resources)),
    }


__all__ = ["SweepOutcome", "run_sweep", "resume_sweep", "read_sweep", "find_sweep"]
