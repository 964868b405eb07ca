"""What one `sla-sweep infer` run leaves behind, shared by the preset path (command) and the
pipeline path (pipeline): its result, the default output folder, the SLA counters' check, the
dense-attention warning, and the upload to the trial's MLflow run."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.infer.errors import InferenceError
from orchestrator.infer.outputs import OutputFolder

if TYPE_CHECKING:
    from orchestrator.infer.target import Target
    from sla_kernel_glue import SLAConfig, SLAHandle

DENSE_WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARNING: --attention dense on SLA-trained weights ({name}, trained with SLA {sla}).
These weights were fine-tuned to work WITH Sparse-Linear Attention; running them with
dense attention drops SLA's linear branch (proj_l), so sample quality WILL DROP.
Run without --attention dense to keep SLA on.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"""


@dataclasses.dataclass
class InferResult:
    """Where the samples went and what ran: the SLA counters prove SLA was on."""

    out_dir: Path
    files: list[Path]
    attention: str
    sla_calls: int
    fallbacks: dict[str, dict[str, int]]
    run_id: str | None
    summary: dict[str, Any]


def warn_dense(name: str, sla: SLAConfig) -> None:
    """The loud warning for SLA-trained weights run with dense attention."""
    print(DENSE_WARNING.format(name=name, sla=sla.to_dict()), file=sys.stderr, flush=True)


def checked_sla_counts(
    handle: SLAHandle | None, name: str
) -> tuple[int, dict[str, dict[str, int]]]:
    """(SLA calls, dense fallbacks) after a generation. InferenceError when SLA was injected but
    no attention call ran through it; a warning when self-attention calls ran dense."""
    if handle is None:
        return 0, {}
    sla_calls, fallbacks = handle.sla_calls(), handle.fallback_counts()
    if sla_calls == 0:
        raise InferenceError(f"SLA was injected into {name} but no attention call ran through it")
    self_fallbacks = {
        p: {r: n for r, n in per.items() if r != "cross_attention"} for p, per in fallbacks.items()
    }
    self_fallbacks = {p: per for p, per in self_fallbacks.items() if per}
    if self_fallbacks:
        print(
            f"warning: self-attention calls ran dense instead of SLA: {self_fallbacks}",
            file=sys.stderr,
        )
    return sla_calls, fallbacks


def default_out(resolved: Target, attention: str, seed: int) -> Path:
    """<sweep>/samples/<trial>-<attention>-seed<S>, or ./sla_samples/... outside a sweep."""
    base = (
        resolved.sweep_dir / "samples"
        if resolved.sweep_dir is not None
        else Path.cwd() / "sla_samples"
    )
    return base / f"{resolved.name}-{attention}-seed{seed}"


def log_to_mlflow_run(resolved: Target, out_dir: Path, artifact_path: str) -> str | None:
    """Log the files this run wrote into `out_dir` (its manifest's), and nothing else there, to
    the trial's run as `artifact_path`; returns the run id (None when no run is known)."""
    if resolved.run_id is None or resolved.tracking_uri is None:
        print("MLflow: not logged (no MLflow run is known for this target)")
        return None
    from mlflow.tracking import MlflowClient  # heavy: MLflow, only when there is a run to log to

    client = MlflowClient(tracking_uri=resolved.tracking_uri)
    for path in OutputFolder.claim(out_dir).files():
        client.log_artifact(resolved.run_id, str(path), artifact_path)
    print(f"MLflow: logged to run {resolved.run_id} as {artifact_path} ({resolved.tracking_uri})")
    return resolved.run_id
