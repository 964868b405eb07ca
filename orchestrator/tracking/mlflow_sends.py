"""What each of the buffer's records becomes in MLflow (orchestrator.tracking.mlflow_buffer):
a metric batch split within log_batch's limits and without rows already sent, an artifact, a
dataset input from its plain-dict form; and which failures are worth retrying.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException, RestException

HELD_STATUSES = (401, 403, 429)  # refusals that a later try may not meet
BATCH = {"metrics": 900, "params": 90, "tags": 90}  # within log_batch's limits per call


def send_batch(client, run: str, op: dict[str, Any], sent: set[tuple]) -> None:
    """A batch record's metric rows (those not in `sent`, which gains each row sent), params and
    tags, in calls within log_batch's limits."""
    rows = [m for m in op.get("metrics", ()) if (m[0], m[3], m[2]) not in sent]
    metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in rows]
    params = [Param(k, v) for k, v in op.get("params", ())]
    tags = [RunTag(k, v) for k, v in op.get("tags", ())]
    for what, items in (("metrics", metrics), ("params", params), ("tags", tags)):
        n = BATCH[what]
        for i in range(0, len(items), n):
            client.log_batch(run, **{what: items[i : i + n]})
            if what == "metrics":
                sent.update((m.key, m.step, m.timestamp) for m in items[i : i + n])


def send_artifact(client, run: str, op: dict[str, Any]) -> None:
    """An artifact record's file or folder; a spooled copy is removed once sent."""
    path = Path(op["path"])
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} is gone")
    if path.is_dir():
        client.log_artifacts(run, str(path), op.get("artifact_path"))
    else:
        client.log_artifact(run, str(path), op.get("artifact_path"))
    if op.get("spooled"):
        shutil.rmtree(path.parent, ignore_errors=True)


def dataset_record(dataset_input: DatasetInput) -> dict[str, Any]:
    """A DatasetInput as a plain dict (a journal line holds it)."""
    d = dataset_input.dataset
    return {"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source,
            "schema": d.schema, "profile": d.profile,
            "tags": {t.key: t.value for t in dataset_input.tags}}  # fmt: skip


def dataset_input(record: dict[str, Any]) -> DatasetInput:
    tags = [InputTag(k, v) for k, v in record["tags"].items()]
    fields = {
        k: record[k] for k in ("name", "digest", "source_type", "source", "schema", "profile")
    }
    return DatasetInput(Dataset(**fields), tags=tags)


def transient(exc: Exception) -> bool:
    """Worth retrying: the server unreachable, timing out or failing (5xx, 429), or refusing
    the credentials (401, 403: held, and journaled at the end, until they are mended); not a
    request it refused otherwise (4xx) nor a record that cannot be sent (a missing file, a run
    never made)."""
    if isinstance(exc, (FileNotFoundError, ValueError)):
        return False
    status = None
    if isinstance(exc, RestException):
        status = exc.get_http_status_code()
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    if status is not None and 400 <= int(status) < 500 and int(status) not in HELD_STATUSES:
        return False
    return isinstance(exc, (MlflowException, OSError))


def short(exc: Exception) -> str:
    """The gist of an error: requests' '[Errno 111] Connection refused', else its first line."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    return found.group(0).strip() if found else (text.splitlines() or [type(exc).__name__])[0][:200]
