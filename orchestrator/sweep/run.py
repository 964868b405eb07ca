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
import functools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from orchestrator.report.study import report_findings
from orchestrator.report.table import best_row, format_table, plot_pareto, write_csv
from orchestrator.spec import ExperimentSpec, SpecError
from orchestrator.spec.recipe import build_train_config
from orchestrator.spec.sizes import memory_errors
from orchestrator.storage import StorageError
from orchestrator.storage.records import (
    DONE,
    ENDED,
    ERROR,
    SPEC_FILE,
    STEP_KEY,
    SWEEP_FILE,
    TrialRow,
    load_rows,
    trial_sla,
)
from orchestrator.storage.sweep_files import (  # noqa: F401 (find_sweep, read_sweep: run's API)
    TUNE_DIR,
    base_store,
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
from orchestrator.sweep.preflight import check_tracking_answers, check_writable
from orchestrator.sweep.progress import SweepProgress
from orchestrator.sweep.reachable import check_ray_address, check_tracking_uri
from orchestrator.sweep.trainable import TrialSettings, sweep_trial
from orchestrator.tracking.creds import without_credentials
from orchestrator.tracking.mlflow_log import sweep_note, sweep_recorder
from orchestrator.tracking.mlflow_review import log_review
from orchestrator.tracking.params import flat_params
from orchestrator.tracking.tags import NOTE_TAG, SWEEP_TAG

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


@dataclasses.dataclass
class SweepOutcome:
    """What a finished (or interrupted) sweep left behind."""

    sweep_dir: Path
    rows: list[TrialRow]
    best: TrialRow | None
    complete: bool
    tracking_uri: str
    parent_run_id: str
    timings: dict[str, float]
    stopped_by: int | None = None  # the signal that interrupted it (None: Ctrl-C once, or none)
    uri: str | None = None  # where it lives: sweep_dir, or its bucket URI (sweep_dir: the copy)


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
            from ray import tune

            _quiet_tune_output()
            settings = trial_settings(spec, place, encoded=encoded, local=address is None)
            metric, mode = search_space.tune_metric(spec)
            tuner = tune.Tuner(
                _trainable(settings),
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
                    callbacks=_callbacks(spec, place, parent, settings),
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
    orchestrator.spec.sizes). A joined cluster's CPUs and GPUs are checked once joined."""
    check_writable(spec, tracking_uri)
    check_ray_address(address)
    check_tracking_answers(tracking_uri)  # its port first; then a server silent after connecting
    check_tracking_uri(tracking_uri)
    if spec.storage.remote:
        from orchestrator.storage import check_reachable, open_location

        try:
            check_reachable(open_location(spec.storage.results_dir))
        except StorageError as exc:
            raise SpecError(spec.name, [str(exc)]) from None
    if address is None:
        check_local_auth_mode()
        check_fits(spec, local_resources(), "this machine")
        train = build_train_config(spec.train)
        problems = memory_errors(train, gpu=spec.resources.gpus_per_worker > 0)
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
            from ray import tune

            _quiet_tune_output()
            # what trials.json has as finished, with its final metrics: reported again (not run)
            # when Tune's own state, saved only now and then, still has the trial unfinished
            done = {t: {**row.metrics, STEP_KEY: row.step}
                    for t, row in load_rows(sweep_dir).items() if row.status in DONE}  # fmt: skip
            settings = trial_settings(
                spec, place, encoded=meta.get("encoded"), local=address is None
            )
            tuner = tune.Tuner.restore(
                place.ray_storage(TUNE_DIR),
                _trainable(dataclasses.replace(settings, finished=done)),
                resume_unfinished=True,
                resume_errored=True,
            )
            stopped_by = _fit(tuner)
            t_fit = time.monotonic()
        timings = {"ray_start_s": t_ray - t0, "fit_s": t_fit - t_ray}
        return finish(spec, place, timings, t0, stopped_by=stopped_by)


def finish(
    spec: ExperimentSpec,
    place: SweepPlace,
    timings: dict[str, float],
    t0: float,
    *,
    stopped_by: int | None = None,
) -> SweepOutcome:
    """Table, results.csv, Pareto plot; artifacts to MLflow; the best trial's SLA weights. An
    interrupted sweep leaves no MLflow run RUNNING (the parent and its unfinished trials: KILLED).
    A bucket's finished checkpoints are fetched for the report; every file is uploaded at the end."""
    sweep_dir = place.local
    meta = json.loads((sweep_dir / SWEEP_FILE).read_text())
    rows = _local_rows(place)
    ended = sum(r.status in ENDED for r in rows)
    complete = ended == len(rows) and len(rows) >= meta["expected_trials"]
    best = best_row(rows, spec.metric, spec.mode)
    csv_path = write_csv(rows, sweep_dir / "results.csv")
    plot_path = plot_pareto(rows, sweep_dir / "pareto.png", spec.metric, spec.mode)
    print(format_table(rows, spec.metric, spec.mode))
    recorder = sweep_recorder(sweep_dir, meta)  # the sweep's own: its records in order
    place.fetch_trial_results()  # a bucket's: for the report's loss curves
    findings = report_findings(spec, sweep_dir, rows, recorder, meta["parent_run_id"])
    if best is not None and best.run_id:
        weights = Path(best.checkpoint or "") / "sla_attention.pt"
        if best.checkpoint and weights.is_file():
            recorder.log_artifact(best.run_id, weights, "best_checkpoint")
        recorder.set_tags(
            meta["parent_run_id"], {"best_trial": best.trial_id, "best_run_id": best.run_id}
        )
    note = sweep_note(spec.name, rows, spec.metric, spec.mode, best, sweep_dir)
    note = f"**Verdict:** {findings.verdict.text}\n\n{note}"
    recorder.set_tags(meta["parent_run_id"], {NOTE_TAG: note})  # the parent run's description
    timings["total_s"] = time.monotonic() - t0
    timings.update(trial_overheads(rows))
    (sweep_dir / "timings.json").write_text(json.dumps(timings, indent=1))
    print("[sla-sweep] time: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    if not complete:
        recorder.end_running_children("KILLED")
    status = "FINISHED" if complete and not any(r.status == ERROR for r in rows) else (
        "KILLED" if not complete else "FAILED")  # fmt: skip
    review = log_review(recorder, spec, sweep_dir, rows, complete=complete)
    recorder.finish_parent([csv_path, plot_path], status=status)
    place.push()
    print(f"[sla-sweep] results: {csv_path}  plot: {plot_path}  report: {findings.files[0]}")
    if not complete:
        print(f"[sla-sweep] interrupted; finish it with: sla-sweep resume {place.uri}", flush=True)
    elif best is not None:
        print(f"[sla-sweep] best: {best.trial_id} ({best.label}) checkpoint {best.checkpoint}")
    else:
        print(
            f"[sla-sweep] no SLA trial ran all its steps and reported {spec.metric}: no best trial"
        )
    for line in review:  # sla-sweep ui DIR, the registered model, links on a tracking server
        print(f"[sla-sweep] {line}")
    return SweepOutcome(sweep_dir, rows, best, complete, meta["tracking_uri"],
                        meta["parent_run_id"], timings, stopped_by, place.uri)  # fmt: skip


def _local_rows(place: SweepPlace) -> list[TrialRow]:
    """trials.json's rows; for a bucket, each finished trial's checkpoint fetched (for the
    report's samples and the registered model) and named by its local copy."""
    rows = list(load_rows(place.local).values())
    if place.remote is None:
        return rows
    say = lambda msg: print(f"[sla-sweep] {msg}", flush=True)  # noqa: E731
    return [dataclasses.replace(r, checkpoint=place.localize(r.checkpoint, log=say))
            if r.status in DONE and r.checkpoint else r for r in rows]  # fmt: skip


def trial_overheads(rows: list[TrialRow]) -> dict[str, float]:
    """Mean seconds per trial: Ray start-up (Tune actor, Train controller, worker group,
    torch.distributed) before the worker loop, split into the Tune trial actor's start and the
    Train start-up it then waits for (itself split at the worker process's creation: controller
    and worker scheduling before it, the worker's imports and process group after); the recipe's
    setup and first evaluation; its training and evaluations; Ray's teardown after the last
    report."""
    spans = {"trial_ray_start_s": ("start", "loop_start"),
             "trial_tune_actor_start_s": ("start", "trainable_start"),
             "trial_train_start_s": ("trainable_start", "loop_start"),
             "trial_worker_spawn_s": ("trainable_start", "worker_created"),
             "trial_worker_init_s": ("worker_created", "loop_start"),
             "trial_recipe_setup_s": ("loop_start", "first_report"),
             "trial_training_s": ("first_report", "last_report"),
             "trial_ray_teardown_s": ("last_report", "end")}  # fmt: skip
    out = {}
    for key, (a, b) in spans.items():
        values = [r.times[b] - r.times[a] for r in rows if a in r.times and b in r.times]
        if values:
            out[key] = sum(values) / len(values)
    return out


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
    from orchestrator.recipe.base_model import BASE_STORE_ENV

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


def _quiet_tune_output() -> None:
    """Our progress lines replace Tune's tables: with the legacy reporter, verbose=0 is silent."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def _trainable(settings: TrialSettings):
    from ray import tune

    # The trial's Tune actor only waits on its TorchTrainer: no CPUs of its own (a bundle may not
    # be empty, hence the token memory request); the Train workers hold the trial's resources.
    # It lives on the head node (a sliver of the head's own node resource), and with it the
    # trial's Train controller (Ray Train puts that on its caller's node): a worker node that
    # dies takes only Train workers with it, which Ray Train restarts from the last checkpoint
    # (failure.max_failures); a trial actor on it would take the trial down, ERROR.
    fn = tune.with_parameters(sweep_trial, settings=settings)
    return tune.with_resources(fn, {"cpu": 0, "memory": 1, HEAD_NODE_RESOURCE: TRIAL_ACTOR_SHARE})


def _callbacks(spec: ExperimentSpec, place: SweepPlace, parent: str, settings: TrialSettings):
    """The progress callback (trials.json, MLflow), then, for a bucket, the upload of the files."""
    from orchestrator.storage.sync import SyncCallback
    from sla_kernel_glue import SLAConfig

    train_params = dataclasses.asdict(build_train_config(spec.train))
    progress = SweepProgress(
        place.local, spec.storage.tracking_uri, spec.name, parent,
        functools.partial(trial_sla, settings.fixed_sla), train_params,
        [f.name for f in dataclasses.fields(SLAConfig)],
    )  # fmt: skip
    return [progress] if place.remote is None else [progress, SyncCallback(place)]


def _parent_params(spec: ExperimentSpec) -> dict[str, Any]:
    space = {
        p.field: (p.values[0] if p.kind == "fixed" else {p.kind: list(p.values)}) for p in spec.sla
    }
    searched = {p.field: {p.kind: list(p.values)} for p in spec.train_space}
    return {
        **flat_params("sla", space),
        **flat_params("", searched),
        "control": spec.control,
        "search.algorithm": spec.search.algorithm,
        "search.num_samples": spec.search.num_samples,
        "scheduler": spec.scheduler.name,
        "metric": spec.metric,
        "mode": spec.mode,
        **flat_params("resources", dataclasses.asdict(spec.resources)),
    }


__all__ = ["SweepOutcome", "run_sweep", "resume_sweep", "read_sweep", "find_sweep"]
