"""The driver's view of a running sweep: one Tune Callback that prints progress a person can
follow, keeps trials.json (the sweep's own record, read by `best` and `resume`) and is the only
writer to MLflow."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.recipe.config import VALIDATION_DIR
from orchestrator.report.findings import group_tags
from orchestrator.storage.records import (
    CHECKPOINT_KEY,
    DONE,
    ERROR,
    FINISHED,
    LOOP_START_KEY,
    RUNNING,
    STEP_KEY,
    STOPPED,
    TRAINABLE_START_KEY,
    TRIALS_FILE,
    WORKER_CREATED_KEY,
    TrialRow,
    load_rows,
)
from orchestrator.tracking.mlflow_buffer import RECORDS_LOCK
from orchestrator.tracking.mlflow_log import SweepRecorder
from orchestrator.tracking.params import flat_params
from sla_kernel_glue import SLAConfig


class SweepProgress(Callback):
    """Progress lines, trials.json and MLflow child runs, all from the driver."""

    def __init__(
        self,
        sweep_dir: Path,
        tracking_uri: str,
        experiment_name: str,
        parent_run_id: str,
        resolve_sla: Callable[[dict[str, Any]], dict[str, Any] | None],
        train_params: dict[str, Any],
        sla_fields: list[str],
    ) -> None:
        # Only plain values here: Tune pickles its run config (and so this callback) into the
        # sweep directory, and `sla-sweep resume` gets it back from there.
        self.sweep_dir = Path(sweep_dir)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.parent_run_id = parent_run_id
        self.resolve_sla = resolve_sla  # trial config -> SLA settings dict or None (control)
        self.train_params = flat_params("train", train_params)
        self.sla_fields = sla_fields
        self._recorder: SweepRecorder | None = None
        self.rows: dict[str, TrialRow] = {}
        self.t0 = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_recorder"] = None
        state["rows"] = {}
        return state

    @property
    def recorder(self) -> SweepRecorder:
        """MLflow, opened on first use (and again after unpickling, on resume)."""
        if self._recorder is None:
            # trials.json first: a resumed sweep keeps the rows of the trials it already ran
            self.rows = {**load_rows(self.sweep_dir), **self.rows}
            self._recorder = SweepRecorder(
                self.tracking_uri, self.experiment_name, sweep_dir=self.sweep_dir
            )
            self._recorder.attach_parent(self.parent_run_id)
        return self._recorder

    def setup(self, **info) -> None:
        self.t0 = time.monotonic()
        self.total = int(info.get("total_num_samples") or 0)
        _ = self.recorder

    # ---- Tune callback hooks ------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial)
        if row.status in DONE:
            return  # finished before the sweep was interrupted: resume skips it (TrialSettings.finished)
        row.status = RUNNING
        row.times.setdefault("start", time.time())
        run_id = self._ensure_run(row)
        self.recorder.set_status(run_id, "RUNNING")  # an interrupted one: KILLED
        self._say(f"trial {row.trial_id} started: {row.label}  [{self._counts(trials)}]")
        self._save()

    def on_trial_restore(self, iteration, trials, trial, **info) -> None:
        self.on_trial_start(iteration, trials, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._row(trial)
        if row.status in DONE:
            return  # a finished trial's final result, reported again on resume (not run again)
        step = int(result.get(STEP_KEY, row.step))
        metrics = {k: v for k, v in result.items() if "/" in k and isinstance(v, (int, float))}
        # A trial continued from a checkpoint (worker restart, resume) reports again the steps
        # after that checkpoint: MLflow keeps the first report of each step (one per step).
        logged = "first_report" in row.times and step <= row.step
        row.step = max(row.step, step)
        row.metrics.update(metrics)
        now = time.time()
        row.times.setdefault("first_report", now)
        row.times["last_report"] = now
        if LOOP_START_KEY in result:
            row.times.setdefault("loop_start", float(result[LOOP_START_KEY]))
        for key, name in (
            (TRAINABLE_START_KEY, "trainable_start"),
            (WORKER_CREATED_KEY, "worker_created"),
        ):
            if key in result:
                row.times.setdefault(name, float(result[key]))
        if result.get(CHECKPOINT_KEY):
            row.checkpoint = str(result[CHECKPOINT_KEY])
        run_id = self._ensure_run(row)
        if not logged:
            self.recorder.log_metrics(run_id, metrics, step)
        videos = Path(row.checkpoint or "") / VALIDATION_DIR
        if result.get(CHECKPOINT_KEY) and videos.is_dir():  # the step's validation videos
            self.recorder.log_artifacts(run_id, videos, f"{VALIDATION_DIR}/step_{step:06d}")
        shown = "  ".join(
            f"{k}={metrics[k]:.4g}" for k in ("train/loss", "val/loss") if k in metrics
        )
        ck = "  (checkpoint)" if result.get(CHECKPOINT_KEY) else ""
        self._say(f"trial {row.trial_id} step {step}  {shown}{ck}")
        self._save()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, FINISHED, None, trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = _error_text(trial)
        self._end(trial, ERROR, error, trials)

    # ---- helpers ------------------------------------------------------------------------------
    def _end(self, trial, status: str, error: str | None, trials) -> None:
        row = self._row(trial)
        if status == FINISHED and row.status in DONE:
            return  # a finished trial that resume skipped: already recorded
        steps = row.train.get("steps", self.train_params.get("train.steps", 0))
        if status == FINISHED and row.step < int(steps):
            status = STOPPED  # the scheduler (ASHA) ended it early: never "best"
        row.status = status
        row.error = error
        row.times["end"] = time.time()
        run_id = self._ensure_run(row)
        self.recorder.end_child(run_id, "FAILED" if status == ERROR else "FINISHED", error)
        what = {FINISHED: "finished", STOPPED: f"stopped early by the scheduler at step {row.step}"}
        what = what.get(status, f"FAILED: {error}")
        self._say(f"trial {row.trial_id} {what}  [{self._counts(trials)}]")
        self._save()

    def _row(self, trial) -> TrialRow:
        _ = self.recorder  # loads trials.json before a row is added
        row = self.rows.get(trial.trial_id)
        if row is None:
            config = trial.config["trial"]
            row = TrialRow(
                trial_id=trial.trial_id,
                sla=self.resolve_sla(config),
                train=dict(config.get("train") or {}),
            )
            self.rows[trial.trial_id] = row
        return row

    def _ensure_run(self, row: TrialRow) -> str:
        if row.sla is None:
            sla = {f"sla.{f}": "none (full attention)" for f in self.sla_fields}
        else:  # every SLAConfig field, defaults (and no topk_schedule: None) included
            config = SLAConfig.from_dict(row.sla)
            # to_dict leaves router and mix out at their defaults; a param names them anyway
            ran = {"router": config.router, "mix": config.mix, **config.to_dict()}
            sla = flat_params("sla", {**dict.fromkeys(self.sla_fields), **ran})
        params = {"trial_id": row.trial_id, "sla.enabled": row.sla is not None, **sla,
                  **self.train_params, **flat_params("train", row.train)}  # fmt: skip
        row.run_id = self.recorder.child_run(
            row.trial_id, f"{row.trial_id} {row.label}", params, group_tags(row)
        )
        return row.run_id

    def _counts(self, trials) -> str:
        running = sum(t.status == RUNNING for t in trials)
        done = sum(t.status in (FINISHED, ERROR) for t in trials)
        total = max(len(trials), getattr(self, "total", 0), len(self.rows))
        return f"{running} running, {done}/{total} done, {time.monotonic() - self.t0:.0f}s"

    def _say(self, line: str) -> None:
        print(f"[sla-sweep] {line}", file=sys.stdout, flush=True)

    def _save(self) -> None:
        """trials.json, with the run ids the store has made so far (a run created while the
        tracking server is away has a placeholder until then: MlflowBuffer patches the file)."""
        path = self.sweep_dir / TRIALS_FILE
        tmp = path.with_suffix(".json.tmp")
        with RECORDS_LOCK:
            for row in self.rows.values():
                row.run_id = self.recorder.resolve(row.run_id)
            tmp.write_text(json.dumps([r.to_json() for r in self.rows.values()], indent=1))
            os.replace(tmp, path)


def _error_text(trial) -> str:
    """The last line of the trial's error (the full traceback stays in Tune's error file)."""
    path = getattr(trial, "error_file", None) or ""
    text = ""
    try:
        if path and Path(path).exists():
            text = Path(path).read_text()
    except OSError:
        pass
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "trial failed (see the Tune error file in the sweep directory)"
