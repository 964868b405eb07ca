"""The end of a sweep, run to completion or interrupted: the table, results.csv, the Pareto
plot, the study report, the MLflow parent run's summary, timings.json and the final upload.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from orchestrator.report.study import report_findings
from orchestrator.report.table import best_row, format_table, plot_pareto, write_csv
from orchestrator.spec import ExperimentSpec
from orchestrator.storage.records import DONE, ENDED, ERROR, SWEEP_FILE, TrialRow, load_rows
from orchestrator.storage.sweep_place import SweepPlace
from orchestrator.tracking.mlflow_log import sweep_note, sweep_recorder
from orchestrator.tracking.mlflow_review import log_review
from orchestrator.tracking.tags import NOTE_TAG


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
