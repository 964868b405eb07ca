"""`sla-sweep infer TARGET`: load a trained trial with SLA on and generate samples from fixed seeds.

    sla-sweep infer sla_runs/smoke-20261129-050000            # the sweep's best SLA trial
    sla-sweep infer SWEEP_DIR --trial 00001 --num-samples 8 --seed 3 --device cuda
    sla-sweep infer <mlflow run id> | <checkpoint dir> | <export dir>

Samples (PNG frame grid + GIF per clip, samples.safetensors, samples.json) go to --out, by
default <sweep dir>/samples/<trial>-<attention>-seed<S> (./sla_samples/... outside a sweep),
and are logged as artifacts to the trial's MLflow run when the run is known. --compile runs every
transformer block torch.compiled (as train.compile does; SLA's attention call stays eager): faster
sampling on a GPU once the first denoising step has compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.infer.options import add_device, add_tracking_uri, pick_device, positive_int

if TYPE_CHECKING:
    from orchestrator.infer.target import Target

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


def run_infer(
    target: str,
    *,
    trial: str | None = None,
    out: Path | None = None,
    num_samples: int = 4,
    seed: int = 0,
    device: str = "auto",
    attention: str = "sla",
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
    compile: bool = False,
) -> InferResult:
    """Resolve TARGET, rebuild the model, generate, write and log the samples."""
    from orchestrator.infer.model import InferenceError, load_checkpoint_model, load_export_model
    from orchestrator.infer.samples import generate, sample_inputs, write_samples, write_summary
    from orchestrator.infer.target import resolve_target
    from orchestrator.recipe.compile import compiled_blocks

    resolved = resolve_target(target, trial=trial, tracking_uri=tracking_uri)
    dev = pick_device(device)
    load = load_export_model if resolved.kind == "export" else load_checkpoint_model
    loaded = load(resolved.directory, attention=attention, device=dev)
    if attention == "dense" and loaded.sla is not None:
        print(
            DENSE_WARNING.format(name=resolved.name, sla=loaded.sla.to_dict()),
            file=sys.stderr,
            flush=True,
        )
    noise, labels = sample_inputs(loaded.settings, num_samples=num_samples, seed=seed)
    if loaded.handle is not None:
        loaded.handle.reset_counts()
    with compiled_blocks(loaded.model) if compile else contextlib.nullcontext():
        clips = generate(loaded.model, loaded.settings, noise, labels, device=dev)
    sla_calls = loaded.handle.sla_calls() if loaded.handle is not None else 0
    fallbacks = loaded.handle.fallback_counts() if loaded.handle is not None else {}
    if loaded.handle is not None and sla_calls == 0:
        raise InferenceError(
            f"SLA was injected into {resolved.name} but no attention call ran through it"
        )
    self_fallbacks = {
        p: {r: n for r, n in per.items() if r != "cross_attention"} for p, per in fallbacks.items()
    }
    self_fallbacks = {p: per for p, per in self_fallbacks.items() if per}
    if self_fallbacks:
        print(
            f"warning: self-attention calls ran dense instead of SLA: {self_fallbacks}",
            file=sys.stderr,
        )

    out_dir = Path(out) if out is not None else _default_out(resolved, attention, seed)
    files = write_samples(clips, noise, labels, out_dir)
    summary = {
        "target": target, "trial": resolved.trial_id, "mlflow_run_id": resolved.run_id,
        "attention": attention, "sla": None if loaded.sla is None else loaded.sla.to_dict(),
        "device": str(dev), "seed": seed, "num_samples": num_samples, "classes": labels.tolist(),
        "generation": loaded.settings.to_dict(), "source": loaded.source,
        "sla_calls": sla_calls, "fallbacks": fallbacks, "compile": compile,
    }  # fmt: skip
    files.append(write_summary(out_dir, summary))
    print(f"samples: {len(labels)} clips (PNG frame grids + GIFs) in {out_dir}")
    if attention == "sla":
        print(
            f"SLA: {sla_calls} attention calls through SLA; dense fallbacks: {fallbacks or 'none'}"
        )
    logged = _log_to_mlflow(resolved, out_dir, attention, seed) if log_to_mlflow else None
    return InferResult(out_dir, files, attention, sla_calls, fallbacks, logged, summary)


def _default_out(resolved: Target, attention: str, seed: int) -> Path:
    """<sweep>/samples/<trial>-<attention>-seed<S>, or ./sla_samples/... outside a sweep."""
    base = (
        resolved.sweep_dir / "samples"
        if resolved.sweep_dir is not None
        else Path.cwd() / "sla_samples"
    )
    return base / f"{resolved.name}-{attention}-seed{seed}"


def _log_to_mlflow(resolved: Target, out_dir: Path, attention: str, seed: int) -> str | None:
    """Log the samples folder to the trial's run; returns the run id (None when unknown)."""
    if resolved.run_id is None or resolved.tracking_uri is None:
        print("MLflow: not logged (no MLflow run is known for this target)")
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolved.tracking_uri)
    artifact_path = f"samples/{attention}-seed{seed}"
    client.log_artifacts(resolved.run_id, str(out_dir), artifact_path)
    print(f"MLflow: logged to run {resolved.run_id} as {artifact_path} ({resolved.tracking_uri})")
    return resolved.run_id


# ---- the `sla-sweep infer` subcommand ------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `sla-sweep infer`."""
    p.add_argument(
        "target", help="a sweep directory, checkpoint directory, export directory or MLflow run id"
    )
    p.add_argument(
        "--trial", help="a trial id of the sweep (or a unique suffix); default: the best SLA trial"
    )
    p.add_argument(
        "--out", type=Path, help="where the samples go (default: <sweep>/samples/<trial>-...)"
    )
    p.add_argument(
        "--num-samples",
        type=positive_int,
        default=4,
        help="clips to generate (classes 0, 1, 2, ...)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="noise seed; the same seed gives the same starting noise",
    )
    add_device(p)
    p.add_argument("--attention", choices=("sla", "dense"), default="sla",
                   help="dense runs SLA-trained weights without SLA (quality drops; warned)")  # fmt: skip
    add_tracking_uri(p)
    p.add_argument("--no-mlflow", action="store_true", help="do not log the samples to MLflow")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every transformer block first (SLA's attention call stays eager)")  # fmt: skip


def handle(args: argparse.Namespace) -> int:
    """Load a trained trial with SLA on and generate samples from fixed seeds."""
    try:
        run_infer(
            args.target, trial=args.trial, out=args.out, num_samples=args.num_samples, seed=args.seed,
            device=args.device, attention=args.attention, tracking_uri=args.tracking_uri,
            log_to_mlflow=not args.no_mlflow, compile=args.compile,
        )  # fmt: skip
    except (ValueError, OSError) as exc:  # InferenceError, SLAStateError, bad files: one line
        print(f"sla-sweep infer: error: {exc}", file=sys.stderr)
        return 2
    return 0
