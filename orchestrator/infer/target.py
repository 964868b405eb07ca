"""What `sla-sweep infer TARGET` (and `export`) points at, resolved to a directory to load.

TARGET may be:
  - a sweep directory (sweep.json + trials.json): the best finished SLA trial by the spec's
    metric and mode, or the trial named by --trial (its Tune trial id, or a unique suffix of it);
  - a checkpoint directory (trial.json beside the accelerate state), or a trial directory
    holding checkpoint_* directories (its latest complete one);
  - an export directory (`sla-sweep export` output: inference.json + sla_attention.pt);
  - an MLflow run id: a trial's child run, or a sweep's parent run (its best trial), looked up
    in --tracking-uri, $MLFLOW_TRACKING_URI, or the default store ./sla_runs/mlflow.db;
  - a registered model version, models:/NAME/VERSION (or models:/NAME/latest, models:/NAME@ALIAS),
    in the same store: the checkpoint it names, or, when that is not on this machine and the
    checkpoint was lean, the small files logged with it (orchestrator.tracking.model_registry).
  - any of the directories above as a URI (s3://bucket/prefix/<sweep>, ...): a sweep's files
    are read from the bucket, and the checkpoint to load is fetched into the local cache, keyed
    by its content (orchestrator.storage.local_copy), once per machine.
A checkpoint inside a sweep directory is matched back to its trial, so its samples can be
logged to the trial's MLflow run.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import yaml

from orchestrator.infer.model import INFERENCE_FILE, InferenceError
from orchestrator.recipe.checkpoint import TRIAL_FILE, latest_checkpoint
from orchestrator.report.table import best_row
from orchestrator.spec import SpecError
from orchestrator.spec.schema import DEFAULT_RESULTS_DIR, sqlite_store
from orchestrator.storage import StorageError, check_reachable, is_uri, local_copy, open_location
from orchestrator.storage.local import default_cache_root
from orchestrator.storage.records import SPEC_FILE, SWEEP_FILE, TrialRow, load_rows, read_json
from orchestrator.storage.sweep_place import SweepPlace, open_place
from orchestrator.tracking.tags import CHECKPOINT_TAG, PARENT_TAG, SWEEP_TAG, TRIAL_TAG

RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclasses.dataclass(frozen=True)
class Target:
    """A loadable directory and, when known, the trial and MLflow run it belongs to."""

    kind: str  # "checkpoint" | "export"
    directory: Path
    trial_id: str | None = None
    is_control: bool = False
    run_id: str | None = None
    tracking_uri: str | None = None
    sweep_dir: Path | None = None

    @property
    def name(self) -> str:
        """A short name for output folders: the trial id, else the directory's name."""
        return self.trial_id or self.directory.name


def resolve_target(
    target: str, *, trial: str | None = None, tracking_uri: str | None = None
) -> Target:
    """Resolve TARGET (see the module docstring); InferenceError with one line when it is none."""
    if is_uri(target):
        return from_uri(target, trial)
    path = Path(target).expanduser()
    if path.is_dir():
        path = path.resolve()
        if (path / SWEEP_FILE).is_file():
            return from_sweep(path, trial)
        if trial is not None:
            raise InferenceError(
                f"--trial ({trial!r}) needs a sweep directory; {path} is not one (no sweep.json)"
            )
        if (path / INFERENCE_FILE).is_file():
            return Target("export", path)
        checkpoint = latest_checkpoint(path)
        if checkpoint is not None:
            return _with_trial(checkpoint)
        raise InferenceError(
            f"{path} is neither a sweep directory (sweep.json), a checkpoint directory ({TRIAL_FILE}), "
            f"a trial directory (checkpoint_*) nor an export ({INFERENCE_FILE})"
        )
    if RUN_ID_RE.match(target):
        return from_run_id(target, trial, tracking_uri)
    if target.startswith("models:/"):
        return from_model_uri(target, trial, tracking_uri)
    raise InferenceError(
        f"TARGET ({target!r}) is not an existing directory, an MLflow run id (32 hex digits) "
        "nor a registered model (models:/NAME/VERSION)"
    )


def from_uri(uri: str, trial: str | None) -> Target:
    """A sweep in a bucket (its files pulled), or a checkpoint, trial or export directory there
    (fetched into the local cache)."""
    try:
        loc = open_location(uri, what="TARGET")
        check_reachable(loc, what="TARGET")
        if loc.join(SWEEP_FILE).is_file():
            return from_sweep(open_place(uri).local, trial)
        if trial is not None:
            raise InferenceError(
                f"--trial ({trial!r}) needs a sweep; {uri} is not one (no sweep.json)"
            )
        return resolve_target(str(local_copy(loc)))
    except (StorageError, SpecError) as exc:
        raise InferenceError(str(exc)) from None


def _checkpoint_dir(sweep_dir: Path, meta: dict, recorded: str | None) -> Path | None:
    """A trial's recorded checkpoint as a local directory: itself, or for a bucket sweep its
    copy in the local cache (fetched once)."""
    if not recorded:
        return None
    storage = meta.get("storage")
    if storage:
        place = SweepPlace(sweep_dir, open_location(storage, what="sweep"))
        recorded = place.localize(recorded, log=lambda msg: print(f"[sla-sweep] {msg}"))
        if recorded is None:
            return None
        return latest_checkpoint(Path(recorded))
    return latest_checkpoint(inside_sweep(sweep_dir, recorded))


def inside_sweep(sweep_dir: Path, recorded: str) -> Path:
    """A checkpoint path from trials.json as a path inside the sweep directory. A sweep moved
    or copied elsewhere still finds its own checkpoints (the path after the sweep's folder name,
    under the folder it is in now); a path that leads anywhere else (trials.json edited by
    hand, or damaged) is an InferenceError naming it, never followed."""
    root = Path(sweep_dir).resolve()
    path = Path(recorded)
    if path.is_absolute() and (path.resolve() == root or root in path.resolve().parents):
        return path.resolve()
    parts = path.parts
    if root.name in parts:  # moved: keep what follows the sweep's own folder name
        tail = parts[len(parts) - parts[::-1].index(root.name) :]
        rebased = root.joinpath(*tail).resolve() if tail else root
        if (rebased == root or root in rebased.parents) and rebased.exists():
            return rebased
    raise InferenceError(
        f"{root / 'trials.json'}: a trial's checkpoint ({recorded}) is not inside the sweep "
        f"directory {root}: trials.json was edited or damaged; checkpoints are only read "
        "from inside their sweep"
    )


def from_sweep(sweep_dir: Path, trial: str | None) -> Target:
    """The chosen trial of a sweep directory and its checkpoint."""
    meta = read_json(sweep_dir / SWEEP_FILE)
    rows = list(load_rows(sweep_dir).values())
    if not rows:
        raise InferenceError(
            f"sweep {sweep_dir} has no trials yet (trials.json is missing or empty)"
        )
    row = _pick_trial(sweep_dir, rows, trial)
    checkpoint = _checkpoint_dir(sweep_dir, meta, row.checkpoint)
    if checkpoint is None:
        raise InferenceError(
            f"trial {row.trial_id} of {sweep_dir} has no complete checkpoint "
            f"(recorded: {row.checkpoint or 'none'}); finish the sweep with: sla-sweep resume {sweep_dir}"
        )
    return Target(
        "checkpoint", checkpoint, trial_id=row.trial_id,
        is_control=row.sla is None, run_id=row.run_id, tracking_uri=meta.get("tracking_uri"),
        sweep_dir=sweep_dir,
    )  # fmt: skip


def _pick_trial(sweep_dir: Path, rows: list[TrialRow], trial: str | None) -> TrialRow:
    if trial is not None:
        hits = [r for r in rows if r.trial_id == trial] or [
            r for r in rows if r.trial_id.endswith(trial)
        ]
        if len(hits) != 1:
            known = ", ".join(r.trial_id for r in rows)
            why = "matches no trial" if not hits else "matches several trials"
            raise InferenceError(f"--trial ({trial!r}) {why} of {sweep_dir}; its trials: {known}")
        return hits[0]
    spec = yaml.safe_load((sweep_dir / SPEC_FILE).read_text()) or {}
    metric, mode = spec.get("metric", "val/loss"), spec.get("mode", "min")
    # infer runs SLA: the best SLA trial, not the full-attention control
    best = best_row([r for r in rows if r.sla is not None], metric, mode)
    if best is None:
        raise InferenceError(
            f"sweep {sweep_dir} has no finished SLA trial reporting {metric}; "
            "pass --trial to pick one, or finish the sweep with sla-sweep resume"
        )
    return best


def _with_trial(checkpoint: Path) -> Target:
    """A checkpoint directory, matched to its trial when it lies inside a sweep directory."""
    for parent in checkpoint.parents:
        if (parent / SWEEP_FILE).is_file():
            meta = read_json(parent / SWEEP_FILE)
            for row in load_rows(parent).values():
                recorded = Path(row.checkpoint).resolve() if row.checkpoint else None
                if recorded is not None and recorded in (checkpoint, *checkpoint.parents):
                    return Target(
                        "checkpoint", checkpoint, trial_id=row.trial_id, is_control=row.sla is None,
                        run_id=row.run_id, tracking_uri=meta.get("tracking_uri"), sweep_dir=parent,
                    )  # fmt: skip
            break
    return Target("checkpoint", checkpoint)


def default_tracking_uri() -> str:
    """--tracking-uri's default: $MLFLOW_TRACKING_URI, else ./sla_runs/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_store(Path.cwd() / DEFAULT_RESULTS_DIR)


def from_run_id(run_id: str, trial: str | None, tracking_uri: str | None) -> Target:
    """A trial's child run -> its checkpoint; a sweep's parent run -> its best (or --trial) trial."""
    from mlflow.exceptions import MlflowException  # heavy: MLflow, only for a run id

    uri = tracking_uri or default_tracking_uri()
    client = _client(uri, f"run {run_id}")
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise InferenceError(
            f"run {run_id} is not in the MLflow store {uri}; pass --tracking-uri"
        ) from None
    tags = run.data.tags
    if SWEEP_TAG in tags:  # the parent run of a sweep
        if is_uri(tags[SWEEP_TAG]):
            return from_uri(tags[SWEEP_TAG], trial)
        return from_sweep(Path(tags[SWEEP_TAG]), trial)
    parent_id = tags.get(PARENT_TAG)
    trial_id = tags.get(TRIAL_TAG)
    if not (parent_id and trial_id):
        raise InferenceError(
            f"run {run_id} in {uri} is not an sla-sweep trial or sweep run (no {TRIAL_TAG} tag)"
        )
    sweep_dir = client.get_run(parent_id).data.tags.get(SWEEP_TAG)
    if sweep_dir and is_uri(sweep_dir):
        return from_uri(sweep_dir, trial if trial is not None else trial_id)
    if not sweep_dir or not Path(sweep_dir).is_dir():
        raise InferenceError(
            f"run {run_id}: its sweep directory ({sweep_dir!r}) is not on this machine"
        )
    if trial is not None and trial != trial_id:
        raise InferenceError(f"run {run_id} is trial {trial_id}, not --trial {trial!r}")
    return from_sweep(Path(sweep_dir), trial_id)


def _client(uri: str, what: str):
    """An MlflowClient of the store `uri`; InferenceError when a sqlite store is not there."""
    from mlflow.tracking import MlflowClient  # heavy: MLflow, only for a run id or a model

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise InferenceError(f"no MLflow store at {uri} to look up {what}; pass --tracking-uri")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def from_model_uri(model_uri: str, trial: str | None, tracking_uri: str | None) -> Target:
    """A registered version -> the checkpoint it names (matched back to its trial and run), or
    its logged files (a lean checkpoint) downloaded into the cache."""
    # heavy: model_registry imports MLflow
    from orchestrator.tracking.model_registry import (
        download_lean,
        local_checkpoint,
        resolve_version,
    )

    if trial is not None:
        raise InferenceError(
            f"--trial ({trial!r}) needs a sweep directory; {model_uri} is one model"
        )
    uri = tracking_uri or default_tracking_uri()
    try:
        version = resolve_version(_client(uri, model_uri), model_uri)
    except ValueError as exc:
        raise InferenceError(f"{exc}; pass --tracking-uri for another store") from None
    checkpoint = local_checkpoint(version)
    if checkpoint is not None:
        found = _with_trial(checkpoint.resolve())
        return (
            found
            if found.run_id
            else dataclasses.replace(found, run_id=version.run_id, tracking_uri=uri)
        )
    into = default_cache_root() / "registered" / version.name / str(version.version)
    downloaded = download_lean(version, uri, into)
    if downloaded is None:
        named = version.tags.get(CHECKPOINT_TAG, "none recorded")
        raise InferenceError(
            f"{model_uri}: its checkpoint ({named}) is not on this machine, and its weights were "
            "referenced, not logged (a full fine-tune); run it where the sweep directory is"
        )
    return Target("checkpoint", downloaded, trial_id=version.tags.get(TRIAL_TAG),
                  run_id=version.run_id, tracking_uri=uri)  # fmt: skip
