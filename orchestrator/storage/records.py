"""A sweep directory's own records and the trials in them: the file names, the trial config Tune
passes, the row kept in trials.json, the statuses and what a worker's report carries. Plain
Python: `best`, `infer` and `compare` read these without importing Ray or MLflow.

A trial's config is {"sla": {field: value, ...} | None, "control": bool, "train": {key: value}};
sla None (or control true) is the full-attention control; "train" (optional) holds the searched
training settings by dotted key ("lr", "lora.rank").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPEC_FILE = "spec.yaml"  # the validated experiment, as it was run
SWEEP_FILE = "sweep.json"  # the MLflow store, experiment and parent run; expected trial count
TRIALS_FILE = "trials.json"  # the driver's record of every trial (TrialRow per trial)

# Statuses, as Tune names them, plus STOPPED: Tune's TERMINATED before the last step (the
# scheduler ended the trial early; never "best").
PENDING, RUNNING, FINISHED, STOPPED, ERROR = "PENDING", "RUNNING", "TERMINATED", "STOPPED", "ERROR"
DONE = (FINISHED, STOPPED)  # trials a resumed sweep does not run again
ENDED = (FINISHED, STOPPED, ERROR)  # trials that will not report again

CONTROL = {"sla": None, "control": True}  # the full-attention control's trial config

# What a Train worker's report carries besides its metrics (metrics have a "/" in their name;
# these don't, so the driver does not log them to MLflow).
STEP_KEY = "step"
LOOP_START_KEY = "timing.loop_start"  # when the worker's training loop began (unix time)
TRAINABLE_START_KEY = "timing.trainable_start"  # when the trial's Tune actor began building Train
WORKER_CREATED_KEY = "timing.worker_created"  # when the Train worker's process was created
CHECKPOINT_KEY = "checkpoint_path"  # set by ray.tune.integration.ray_train.TuneReportCallback


class SweepFileError(ValueError):
    """A sweep's own JSON file is damaged; the message names the file."""


def trial_sla(fixed_sla: Mapping[str, Any], trial: Mapping[str, Any]) -> dict[str, Any] | None:
    """The SLA settings a trial runs with (the spec's fixed values + the trial's sampled ones);
    None for the full-attention control."""
    if trial.get("control") or trial.get("sla") is None:
        return None
    return {**fixed_sla, **trial["sla"]}


def trial_train(train: Mapping[str, Any], trial: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainConfig keywords a trial runs with: the spec's `train` with the trial's searched
    settings set ("lora.rank" sets train["lora"]["rank"])."""
    out = dict(train)
    for key, value in (trial.get("train") or {}).items():
        *outer, last = key.split(".")
        target = out
        for part in outer:
            target[part] = dict(target.get(part) or {})
            target = target[part]
        target[last] = value
    return out


@dataclasses.dataclass
class TrialRow:
    """One trial as the sweep saw it: config, latest value of every metric, status, checkpoint."""

    trial_id: str
    sla: dict[str, Any] | None  # None: the full-attention control
    status: str = PENDING
    step: int = 0
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None
    run_id: str | None = None
    error: str | None = None
    # unix times seen by the driver: start (Tune started the trial), loop_start (the Train
    # worker's loop began), first_report, last_report, end (Tune saw it finish)
    times: dict[str, float] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # searched training settings

    @property
    def settings(self) -> dict[str, Any]:
        """What the search chose: SLA fields by name, training settings as "train.<key>"."""
        return {**(self.sla or {}), **{f"train.{k}": v for k, v in self.train.items()}}

    @property
    def label(self) -> str:
        text = " ".join(f"{k}={format_value(v)}" for k, v in self.settings.items())
        if self.sla is None:
            return "control (full attention)" + (f" {text}" if text else "")
        return text

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialRow:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def load_rows(sweep_dir: Path) -> dict[str, TrialRow]:
    """trials.json of a sweep directory, by trial id ({} before the first trial started)."""
    path = Path(sweep_dir) / TRIALS_FILE
    if not path.is_file():
        return {}
    return {d["trial_id"]: TrialRow.from_json(d) for d in read_json(path)}


def read_json(path: Path) -> Any:
    """One of a sweep's JSON files; SweepFileError naming the file when it is damaged."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise SweepFileError(f"{path}: damaged sweep file, not valid JSON ({exc})") from None


def format_value(v: Any) -> str:
    """A setting as the tables show it: floats in %g, the rest as str."""
    return f"{v:g}" if isinstance(v, float) else str(v)
