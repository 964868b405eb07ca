"""`sla-sweep infer TARGET`: load a trained trial with SLA on and generate samples from fixed seeds.

    sla-sweep infer sla_runs/smoke-20261129-050000            # the sweep's best SLA trial
    sla-sweep infer SWEEP_DIR --trial 00001 --num-samples 8 --seed 3 --device cuda
    sla-sweep infer <mlflow run id> | <checkpoint dir> | <export dir>

Samples (PNG frame grid + GIF per clip, samples.safetensors, samples.json) go to --out, by
default <sweep dir>/samples/<trial>-<attention>-seed<S> (./sla_samples/... outside a sweep),
and are logged as artifacts to the trial's MLflow run when the run is known. --out must be new,
empty or an earlier infer's (its manifest lists the files infer wrote there): a rerun replaces
those files only, and only the files this run wrote are logged (orchestrator.infer.outputs).
--compile runs every transformer block torch.compiled (as train.compile does; SLA's attention
call stays eager): faster sampling on a GPU once the first denoising step has compiled.

A pipeline trial (trained on a diffusers Wan pipeline directory) or its export generates videos
from text instead, through stock WanPipeline (orchestrator.infer.pipeline, pipeline_videos):

    sla-sweep infer <pipeline checkpoint | pipeline export> --prompt "..." [--prompt ...]
        [--negative-prompt TEXT] [--frames F] [--size H W | --size N] [--steps S] [--guidance G]

one MP4 and frame-grid PNG per prompt, frames.safetensors and videos.json in the same folder,
logged as videos/<attention>-seed<S>.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.infer.errors import InferenceError
from orchestrator.infer.options import add_device, add_tracking_uri, pick_device, positive_int
from orchestrator.infer.outputs import OutputFolder
from orchestrator.infer.results import (
    InferResult,
    checked_sla_counts,
    default_out,
    log_to_mlflow_run,
    warn_dense,
)

if TYPE_CHECKING:
    import torch

    from orchestrator.infer.pipeline import VideoRequest
    from orchestrator.infer.target import Target


def run_infer(
    target: str,
    *,
    trial: str | None = None,
    out: Path | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    device: str = "auto",
    attention: str = "sla",
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
    compile: bool = False,
    video: VideoRequest | None = None,
    precision: str = "auto",
) -> InferResult:
    """Resolve TARGET, rebuild the model, generate, write and log the samples.

    A preset trial samples `num_samples` (default 4) class-conditioned clips; a pipeline trial
    (or export) makes one video per prompt of `video` through WanPipeline
    (orchestrator.infer.pipeline), and `video`'s options are refused for a preset trial."""
    # heavy: pipeline, target, model and samples import torch and diffusers
    from orchestrator.infer.pipeline import VideoRequest, pipeline_root, preset_refusal
    from orchestrator.infer.pipeline_videos import run_pipeline_infer
    from orchestrator.infer.target import resolve_target

    resolved = resolve_target(target, trial=trial, tracking_uri=tracking_uri)
    video = video or VideoRequest()
    root = pipeline_root(resolved)
    if root is None and video.given():
        raise InferenceError(preset_refusal(resolved, video.given()))
    if root is not None and num_samples is not None:
        raise InferenceError(
            f"--num-samples ({num_samples}) is for preset trials; {resolved.name} is a pipeline "
            "trial: it makes one video per --prompt"
        )
    out = Path(out) if out is not None else default_out(resolved, attention, seed)
    OutputFolder.claim(out)  # refused before anything loads when infer may not write there
    dev = pick_device(device)
    if root is not None:
        return run_pipeline_infer(
            resolved, root, video, target=target, out=out, seed=seed, device=dev,
            attention=attention, log_to_mlflow=log_to_mlflow, compile=compile,
            precision=precision,
        )  # fmt: skip
    return _run_preset_infer(
        resolved, target=target, out=out, num_samples=4 if num_samples is None else num_samples,
        seed=seed, device=dev, attention=attention, log_to_mlflow=log_to_mlflow, compile=compile,
    )  # fmt: skip


def _run_preset_infer(
    resolved: Target,
    *,
    target: str,
    out: Path | None,
    num_samples: int,
    seed: int,
    device: torch.device,
    attention: str,
    log_to_mlflow: bool,
    compile: bool,
) -> InferResult:
    """A preset trial's class-conditioned samples from fixed seeds (see the module docstring)."""
    # heavy: torch and diffusers
    from orchestrator.infer.model import load_checkpoint_model, load_export_model
    from orchestrator.infer.samples import generate, sample_inputs, write_samples, write_summary
    from orchestrator.recipe.compile import compiled_blocks

    load = load_export_model if resolved.kind == "export" else load_checkpoint_model
    loaded = load(resolved.directory, attention=attention, device=device)
    if attention == "dense" and loaded.sla is not None:
        warn_dense(resolved.name, loaded.sla)
    noise, labels = sample_inputs(loaded.settings, num_samples=num_samples, seed=seed)
    if loaded.handle is not None:
        loaded.handle.reset_counts()
    with compiled_blocks(loaded.model) if compile else contextlib.nullcontext():
        clips = generate(loaded.model, loaded.settings, noise, labels, device=device)
    sla_calls, fallbacks = checked_sla_counts(loaded.handle, resolved.name)

    out_dir = Path(out) if out is not None else default_out(resolved, attention, seed)
    files = write_samples(clips, noise, labels, out_dir)
    summary = {
        "target": target, "trial": resolved.trial_id, "mlflow_run_id": resolved.run_id,
        "attention": attention, "sla": None if loaded.sla is None else loaded.sla.to_dict(),
        "device": str(device), "seed": seed, "num_samples": num_samples, "classes": labels.tolist(),
        "generation": loaded.settings.to_dict(), "source": loaded.source,
        "sla_calls": sla_calls, "fallbacks": fallbacks, "compile": compile,
    }  # fmt: skip
    files.append(write_summary(out_dir, summary))
    print(f"samples: {len(labels)} clips (PNG frame grids + GIFs) in {out_dir}")
    if attention == "sla":
        print(
            f"SLA: {sla_calls} attention calls through SLA; dense fallbacks: {fallbacks or 'none'}"
        )
    artifact_path = f"samples/{attention}-seed{seed}"
    logged = log_to_mlflow_run(resolved, out_dir, artifact_path) if log_to_mlflow else None
    return InferResult(out_dir, files, attention, sla_calls, fallbacks, logged, summary)


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
        help="preset trials: clips to generate (classes 0, 1, 2, ...; default 4)",
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
    add_video_arguments(p.add_argument_group("pipeline trials (text to video through WanPipeline)"))


def add_video_arguments(group: argparse._ArgumentGroup) -> None:
    """The text-to-video options; unset, each takes the trial's validation setting."""
    group.add_argument("--prompt", action="append", default=[],
                       help="one video per --prompt (default: the trial's validation prompts)")  # fmt: skip
    group.add_argument("--negative-prompt", help="default: the trial's validation negative prompt")
    group.add_argument(
        "--frames",
        type=positive_int,
        help="frames per video, 4k+1 for the VAE (default: the trial's)",
    )
    group.add_argument("--size", type=positive_int, nargs="+", metavar="N",
                       help="H W, or N for N x N: multiples of the VAE factor times the patch (default: the trial's)")  # fmt: skip
    group.add_argument(
        "--steps",
        type=positive_int,
        help="WanPipeline's num_inference_steps (default: the trial's validation.steps)",
    )
    group.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                       help="the transformer's compute: bf16 autocast (weights stay float32, as in "
                            "training and validation) or float32; auto: bf16 on CUDA, fp32 on the CPU")  # fmt: skip
    group.add_argument("--guidance", type=guidance_scale,
                       help="classifier-free guidance scale, >= 1 (1: none; default: the trial's, 5.0 unless set)")  # fmt: skip


def guidance_scale(text: str) -> float:
    """argparse type: a finite number >= 1."""
    value = float(text)
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 1, got {text}")
    return value


def video_request(args: argparse.Namespace) -> VideoRequest:
    """The text-to-video options of the command line; InferenceError for a bad --size."""
    from orchestrator.infer.pipeline import VideoRequest  # heavy: torch and diffusers

    size = args.size
    if size is not None and len(size) not in (1, 2):
        raise InferenceError(f"--size takes N or H W, got {len(size)} values ({size})")
    return VideoRequest(
        prompts=tuple(args.prompt), negative_prompt=args.negative_prompt, frames=args.frames,
        size=None if size is None else (size[0], size[-1]), steps=args.steps,
        guidance=args.guidance,
    )  # fmt: skip


def handle(args: argparse.Namespace) -> int:
    """Load a trained trial with SLA on and generate from fixed seeds (pipelines: from prompts).

    A preset trial samples class-conditioned clips; a pipeline trial makes videos through
    WanPipeline, one per --prompt."""
    try:
        run_infer(
            args.target, trial=args.trial, out=args.out, num_samples=args.num_samples, seed=args.seed,
            device=args.device, attention=args.attention, tracking_uri=args.tracking_uri,
            log_to_mlflow=not args.no_mlflow, compile=args.compile, video=video_request(args),
            precision=args.precision,
        )  # fmt: skip
    except (ValueError, OSError) as exc:  # InferenceError, SLAStateError, bad files: one line
        print(f"sla-sweep infer: error: {exc}", file=sys.stderr)
        return 2
    return 0
