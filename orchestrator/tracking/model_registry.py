"""The best SLA trial of a finished sweep as a registered model version, and back.

The version (registered model = the sweep's experiment name) is made from an MLflow logged model
of the trial's run holding only the checkpoint's small files: trial.json, sla_attention.pt and,
for a LoRA trial, the adapter. The weights of a full fine-tune (model.safetensors, gigabytes for
a real model) are never copied: the version's `sla_sweep.checkpoint` tag names the checkpoint
directory, which `sla-sweep infer models:/NAME/VERSION` loads. A frozen base's (lean) checkpoint
is whole without its optimizer state, so on a machine without the sweep directory the logged
files themselves are loaded (the base comes from its path or cache, as for any lean checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from orchestrator.recipe.checkpoint import LEAN, SLA_FILE, TRIAL_FILE
from orchestrator.recipe.lora import LORA_FILE
from orchestrator.storage.records import TrialRow
from orchestrator.tracking.params import flat_params
from orchestrator.tracking.tags import CHECKPOINT_TAG, LEAN_TAG, MODEL_ID_TAG, SWEEP_TAG, TRIAL_TAG
from orchestrator.values import is_num

MODEL_TYPE = "sla-checkpoint"
SMALL_FILES = (TRIAL_FILE, SLA_FILE, LORA_FILE)
VERSION_METRICS = ("val/loss", "val/loss_gap", "val/sample_psnr", "val/attn_rel_err",
                   "flops/attention_ratio")  # fmt: skip


def register_best(
    client, experiment_id: str, name: str, best: TrialRow, checkpoint: Path, sweep_dir: Path
) -> ModelVersion:
    """The version of `name` for this sweep's best trial: made once (a resumed sweep's finish
    finds it again), tagged with the trial's SLA settings and metrics."""
    for version in client.search_model_versions(f"name = '{name}'"):
        if (
            version.tags.get(SWEEP_TAG) == str(sweep_dir)
            and version.tags.get(TRIAL_TAG) == best.trial_id
        ):
            return version
    lean = json.loads((checkpoint / TRIAL_FILE).read_text()).get("checkpoint") == LEAN
    settings = {k: str(v) for k, v in flat_params("sla", best.sla or {}).items()}
    settings.update({k: str(v) for k, v in flat_params("train", best.train).items()})
    metrics = {k: f"{float(best.metrics[k]):.6g}" for k in VERSION_METRICS
               if is_num(best.metrics.get(k))}  # fmt: skip
    tags = {TRIAL_TAG: best.trial_id, SWEEP_TAG: str(sweep_dir), CHECKPOINT_TAG: str(checkpoint),
            LEAN_TAG: str(lean).lower(), **settings, **metrics}  # fmt: skip
    model = client.create_logged_model(
        experiment_id, name=f"{name}-{best.trial_id}", source_run_id=best.run_id,
        tags=tags, params=settings, model_type=MODEL_TYPE,
    )  # fmt: skip
    for file in SMALL_FILES:
        if (checkpoint / file).is_file():
            client.log_model_artifact(model.model_id, str(checkpoint / file))
    client.finalize_logged_model(model.model_id, "READY")
    tags[MODEL_ID_TAG] = model.model_id
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description=f"The best SLA trial of each `{name}` sweep (sla-sweep)."
        )
    shown = ", ".join(f"{k}={v}" for k, v in {**settings, **metrics}.items())
    return client.create_model_version(
        # the logged model's artifact location, not models:/<id>: MLflow's sqlite registry looks
        # a models:/ source up in the default tracking store, not this client's
        name, source=model.artifact_location, run_id=best.run_id, tags=tags,
        description=f"Trial {best.trial_id} of {sweep_dir.name}: {shown}. Checkpoint: {checkpoint}",
        model_id=model.model_id,
    )  # fmt: skip


def resolve_version(client, uri: str) -> ModelVersion:
    """models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS -> the version;
    ValueError (one line) when the URI or the version is not there."""
    rest = uri[len("models:/") :]
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = rest.partition("/")
        if not name or not version or "/" in version:
            raise ValueError(
                f"{uri!r} is not models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS"
            )
        if version == "latest":
            found = client.search_model_versions(f"name = '{name}'")
            if not found:
                raise ValueError(f"registered model {name!r} has no versions")
            return max(found, key=lambda v: int(v.version))
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(f"{uri} is not in the model registry ({exc.message})") from None


def local_checkpoint(version: ModelVersion) -> Path | None:
    """The checkpoint directory the version names, when it is on this machine."""
    path = version.tags.get(CHECKPOINT_TAG)
    return Path(path) if path and (Path(path) / TRIAL_FILE).is_file() else None


def download_lean(version: ModelVersion, tracking_uri: str, into: Path) -> Path | None:
    """A lean version's logged files, downloaded into `into` (a checkpoint directory); None for
    a full fine-tune, whose weights were referenced, not logged."""
    model_id = version.model_id or version.tags.get(MODEL_ID_TAG)
    if version.tags.get(LEAN_TAG) != "true" or not model_id:
        return None
    into.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{model_id}", dst_path=str(into), tracking_uri=tracking_uri
    )
    return into if (into / TRIAL_FILE).is_file() else None
