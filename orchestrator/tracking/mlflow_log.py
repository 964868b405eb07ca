"""Driver-side MLflow logging: one experiment per YAML name, a parent run per sweep, a child run
per trial. Only the driver writes (MlflowClient with explicit run ids), never the workers.

Writes go through the sweep's MlflowBuffer (mlflow_buffer.py): queued, sent in order in the
background, held and retried while a tracking server does not answer. Reads (finding the
experiment and the runs of a sweep, registering the best model) ask the store directly."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import DatasetInput
from mlflow.tracking import MlflowClient

from orchestrator.report.labels import config_label, label_keys
from orchestrator.report.table import best_row
from orchestrator.storage.records import SWEEP_FILE
from orchestrator.tracking.creds import public_uri
from orchestrator.tracking.datasets import training_input
from orchestrator.tracking.mlflow_buffer import quick_http_failures, shared_buffer
from orchestrator.tracking.mlflow_review import save_view, view_columns, view_state
from orchestrator.tracking.mlflow_sends import dataset_record
from orchestrator.tracking.tags import ERROR_TAG, PARENT_TAG, SWEEP_TAG, TRIAL_TAG
from orchestrator.values import is_num

NOTE_METRICS = ("val/loss", "val/loss_gap", "val/sample_psnr", "flops/attention_ratio")
END_WAIT_S = 60.0  # at a sweep's end, how long to wait for a tracking server that is away
ENDED = ("FINISHED", "FAILED", "KILLED")
_LIVE: dict[str, SweepRecorder] = {}  # sweep directory -> its recorder in this process


class SweepRecorder:
    """Owns the MLflow side of one sweep. Safe to re-create on resume (runs are looked up)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        *,
        sweep_dir: Path | None = None,
        experiment_id: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        quick_http_failures(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.sweep_dir = Path(sweep_dir) if sweep_dir else None
        self.buffer = shared_buffer(self.client, public_uri(tracking_uri), self.sweep_dir)
        if experiment_id is None:
            exp = self.client.get_experiment_by_name(experiment_name)
            experiment_id = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(
                    experiment_name, artifact_location=artifact_location(tracking_uri)
                )
            )
        self.experiment_id = experiment_id
        self.parent_run_id: str | None = None
        self._child: dict[str, str] = {}  # trial id -> run id (or placeholder)
        self._status: dict[str, str] = {}  # run id -> the status last set
        self._dataset: DatasetInput | bool | None = None  # False: could not be read
        self._end_by: float | None = None

    # ---- parent -------------------------------------------------------------------------------
    def start_parent(self, sweep_dir: Path, params: Mapping[str, Any], spec_file: Path) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=sweep_dir.name, tags={SWEEP_TAG: str(sweep_dir)}
        )
        self.parent_run_id = run.info.run_id
        self.sweep_dir = Path(sweep_dir)  # from now on, the sweep's buffer (its spool, journal)
        self.buffer = shared_buffer(self.client, public_uri(self.tracking_uri), self.sweep_dir)
        self._log_params(self.parent_run_id, params)
        self.log_artifact(self.parent_run_id, spec_file)
        metric, mode = str(params.get("metric", "val/loss")), str(params.get("mode", "min"))
        state = view_state(self.parent_run_id, view_columns(params), metric, mode)
        save_view(self, self.experiment_id, self.parent_run_id, state)
        return self.parent_run_id

    def attach_parent(self, run_id: str) -> None:
        """Resume: reopen the parent run and find the child runs already made (and those a
        journal still has to make)."""
        self.parent_run_id = run_id
        self.set_status(run_id, "RUNNING")
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'",
            max_results=5000,
        )
        for r in runs:
            trial = r.data.tags.get(TRIAL_TAG)
            if trial:
                self._child[trial] = r.info.run_id
                self._status[r.info.run_id] = r.info.status
        for trial, ref in self.buffer.pending_runs().items():
            self._child.setdefault(trial, ref)
        if self.sweep_dir is not None:
            _LIVE[str(self.sweep_dir)] = self

    def finish_parent(self, artifacts: list[Path], status: str = "FINISHED") -> bool:
        """The parent's last artifacts and status, then every record sent (a server that is
        away: waited for, then journaled). Whether everything reached the store."""
        assert self.parent_run_id is not None
        for path in artifacts:
            if path.exists():
                self.log_artifact(self.parent_run_id, path)
        self._end(self.parent_run_id, status)
        if self.sweep_dir is not None:
            _LIVE.pop(str(self.sweep_dir), None)
        return self.buffer.close(self._end_wait())

    def settled(self) -> bool:
        """At a sweep's end: whether every record queued so far reached the store, waiting for
        it up to END_WAIT_S in all (counted from the first call)."""
        return self.buffer.flush(self._end_wait())

    def _end_wait(self) -> float:
        if self._end_by is None:
            self._end_by = time.monotonic() + END_WAIT_S
        return self._end_by - time.monotonic()

    # ---- children -----------------------------------------------------------------------------
    def child_run(
        self,
        trial_id: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """The trial's child run, created (with its params and tags) the first time it is asked
        for; a placeholder id until the store has made it (MlflowBuffer.resolve)."""
        if trial_id in self._child:
            return self._child[trial_id]
        assert self.parent_run_id is not None, "start_parent or attach_parent first"
        find = f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        run_id = self.buffer.new_run({
            "experiment_id": self.experiment_id, "run_name": run_name, "trial": trial_id,
            "tags": {**(tags or {}), PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id},
            "start_time": _now_ms(), "find": find})  # fmt: skip
        self._child[trial_id] = run_id
        self._status[run_id] = "RUNNING"
        self._log_params(run_id, params)
        dataset = self.training_input()
        if dataset is not None:
            self.buffer.submit(
                {"op": "inputs", "run": run_id, "datasets": [dataset_record(dataset)]}
            )
        return run_id

    def training_input(self) -> DatasetInput | None:
        """The sweep's training data (datasets.training_input), found from the sweep directory
        once per driver; None, said once, when it cannot be read."""
        if self._dataset is None:
            assert self.parent_run_id is not None
            sweep_dir = self.sweep_dir or self.client.get_run(self.parent_run_id).data.tags.get(
                SWEEP_TAG
            )
            try:
                self._dataset = training_input(Path(sweep_dir)) if sweep_dir else False
            except (OSError, ValueError, KeyError) as exc:
                print(f"[sla-sweep] no MLflow dataset input for the trials: {exc}", flush=True)
                self._dataset = False
        return self._dataset or None

    def end_running_children(self, status: str = "KILLED") -> None:
        """An interrupted sweep: every child run still RUNNING ends with `status`."""
        for run_id in self._child.values():
            if self._status.get(run_id, "RUNNING") not in ENDED:
                self._end(run_id, status)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        now = _now_ms()
        rows = [[key, float(value), now, int(step)] for key, value in metrics.items()
                if "/" in key and is_num(value)]  # fmt: skip
        if rows:
            self.buffer.submit({"op": "batch", "run": run_id, "metrics": rows})

    def set_status(self, run_id: str, status: str) -> None:
        self._status[run_id] = status
        self.buffer.submit({"op": "status", "run": run_id, "status": status})

    def end_child(self, run_id: str, status: str, error: str | None = None) -> None:
        if error:
            self.set_tags(run_id, {ERROR_TAG: error[:4000]})
        self._end(run_id, status)

    def _end(self, run_id: str, status: str) -> None:
        self._status[run_id] = status
        self.buffer.submit({"op": "end", "run": run_id, "status": status, "end_time": _now_ms()})

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.buffer.submit({"op": "artifact", "run": run_id, "path": str(path),
                            "artifact_path": artifact_path})  # fmt: skip

    def log_artifacts(self, run_id: str, directory: Path, artifact_path: str | None = None) -> None:
        """Every file of a directory (a checkpoint's validation videos and frame grids)."""
        self.log_artifact(run_id, directory, artifact_path)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.buffer.submit({"op": "batch", "run": run_id,
                            "tags": [[k, str(v)] for k, v in tags.items()]})  # fmt: skip

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """As MlflowClient's (save_view takes either)."""
        self.buffer.submit({"op": "experiment_tag", "experiment_id": experiment_id,
                            "key": key, "value": value})  # fmt: skip

    def resolve(self, run_id: str | None) -> str | None:
        """The run id of a placeholder whose run the store has made (itself otherwise)."""
        return self.buffer.resolve(run_id)

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [[k, _param_str(v)] for k, v in params.items()]
        self.buffer.submit({"op": "batch", "run": run_id, "params": items})


def sweep_recorder(sweep_dir: Path, meta: Mapping[str, Any]) -> SweepRecorder:
    """The recorder of a sweep (sweep.json's `meta`): this process's own while its sweep runs
    (its records keep their order, nothing is asked of the store), else a new one."""
    live = _LIVE.get(str(Path(sweep_dir)))
    if live is not None:
        return live
    recorder = SweepRecorder(meta["tracking_uri"], meta["name"], sweep_dir=Path(sweep_dir),
                             experiment_id=meta.get("experiment_id"))  # fmt: skip
    recorder.attach_parent(meta["parent_run_id"])
    return recorder


def _now_ms() -> int:
    return int(time.time() * 1000)


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store go beside it (<db dir>/mlartifacts), not into whatever working
    directory the driver has; other stores (a server) choose their own (None)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    return (db.parent / "mlartifacts").resolve().as_uri()


def sweep_note(name: str, rows: list, metric: str, mode: str, best, sweep_dir: Path) -> str:
    """The parent run's description: what was swept, the best trial, a table, how to compare."""
    keys = label_keys(rows, repeats=True)
    sla_rows = [r for r in rows if r.sla is not None]
    lines = [
        f"**SLA sweep `{name}`**: {len(sla_rows)} SLA trials"
        + (" + the full-attention control" if len(sla_rows) < len(rows) else "")
        + f", ranked by `{metric}` ({mode}).",
        "",
    ]
    if best is None:
        lines.append(f"**No finished trial reports `{metric}` yet.**")
    else:
        shown = ", ".join(f"{m}={best.metrics[m]:.4g}" for m in NOTE_METRICS if m in best.metrics)
        lines.append(f"**Best trial: {best.trial_id}** ({best.label}): {shown}")
        best_sla = best_row(sla_rows, metric, mode)
        if best.sla is None and best_sla is not None:
            lines.append(f"Best SLA trial: {best_sla.trial_id} ({best_sla.label})")
    lines += ["", "| trial | config | " + " | ".join(NOTE_METRICS) + " | status |",
              "|---" * (len(NOTE_METRICS) + 3) + "|"]  # fmt: skip
    for r in rows:
        values = " | ".join(f"{r.metrics[m]:.4g}" if m in r.metrics else "-" for m in NOTE_METRICS)
        lines.append(f"| {r.trial_id} | {config_label(r, keys)} | {values} | {r.status} |")
    parent = _parent_of(sweep_dir)
    if parent:  # the Pareto plot inline: the UI's own artifact endpoint, relative to its page
        lines += [
            "",
            f"![Quality against attention FLOPs](get-artifact?path=pareto.png&run_uuid={parent})",
        ]
    lines += [
        "",
        "Quality against FLOPs: select the child runs, Compare, Scatter Plot with x = "
        "`flops/attention_ratio`, y = `val/loss` (or `val/sample_psnr`).",
        f"Samples from the best SLA trial: `sla-sweep infer {sweep_dir}`",
    ]
    return "\n".join(lines)


def _parent_of(sweep_dir: Path) -> str | None:
    """The parent run id that sweep.json records (None before it is written)."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()).get("parent_run_id") if path.is_file() else None


def _param_str(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
