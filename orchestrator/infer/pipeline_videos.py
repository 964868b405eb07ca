"""A pipeline trial's videos: WanPipeline run per prompt with SLA on, written as MP4s, frame grids,
frames.safetensors and videos.json, and logged to the trial's MLflow run (see
orchestrator.infer.pipeline)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import WanPipeline
from safetensors.torch import save_file

from orchestrator.data.video_writers import write_frame_grid, write_video
from orchestrator.infer.model import Attention
from orchestrator.infer.outputs import OutputFolder
from orchestrator.infer.pipeline import (
    VideoRequest,
    VideoSettings,
    check_settings,
    load_pipeline_trial,
    video_defaults,
)
from orchestrator.infer.precision import autocast_forward, resolve_precision
from orchestrator.infer.results import (
    InferResult,
    checked_sla_counts,
    default_out,
    log_to_mlflow_run,
    warn_dense,
)
from orchestrator.models.experts import expert_modules
from orchestrator.models.pipeline import read_pipeline
from orchestrator.recipe.compile import compiled_blocks

if TYPE_CHECKING:
    from orchestrator.infer.target import Target


FRAMES_FILE = "frames.safetensors"  # WanPipeline's float frames: comparisons read these
SUMMARY_FILE = "videos.json"


@torch.no_grad()
def generate_videos(
    pipe: WanPipeline,
    settings: VideoSettings,
    *,
    seed: int,
    max_text_len: int,
    seconds: list[float] | None = None,
) -> torch.Tensor:
    """WanPipeline's frames for every prompt: (n, F, 3, H, W) float32 on the CPU, in [0, 1].
    seconds, when given, gets each video's wall time (text encoding, denoising and decode)."""
    videos = []
    for prompt in settings.prompts:
        started = time.perf_counter()
        frames = pipe(
            prompt, negative_prompt=settings.negative_prompt, height=settings.height,
            width=settings.width, num_frames=settings.frames, num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale, generator=torch.Generator().manual_seed(seed),
            output_type="pt", max_sequence_length=max_text_len,
        ).frames  # fmt: skip
        videos.append(frames[0].float().cpu())  # a copy to the host: the GPU work is done
        if seconds is not None:
            seconds.append(time.perf_counter() - started)
    return torch.stack(videos)


def write_videos(
    out_dir: Path, videos: torch.Tensor, settings: VideoSettings, *, seed: int
) -> list[Path]:
    """An MP4 and a frame-grid PNG per prompt, and frames.safetensors; returns the paths.
    out_dir's earlier infer outputs are replaced, nothing else in it is touched
    (orchestrator.infer.outputs); videos.json, written next, is recorded as this run's too."""
    stems = _video_stems(settings, seed)
    OutputFolder.claim(out_dir).replace(video_files(settings, seed))
    files = []
    for name, frames in zip(stems, videos, strict=True):
        stem = out_dir / name
        pixels = frames.permute(1, 0, 2, 3) * 2 - 1  # (3, F, H, W) in [-1, 1]
        files.append(write_video(stem.with_suffix(".mp4"), pixels, fps=settings.fps))
        files.append(write_frame_grid(stem.with_suffix(".png"), pixels))
    save_file({"frames": videos.contiguous()}, str(out_dir / FRAMES_FILE))
    return [*files, out_dir / FRAMES_FILE]


def video_files(settings: VideoSettings, seed: int) -> list[str]:
    """The names of the files write_videos and run_pipeline_infer write, videos.json included."""
    names = [f"{stem}{ext}" for stem in _video_stems(settings, seed) for ext in (".mp4", ".png")]
    return [*names, FRAMES_FILE, SUMMARY_FILE]


def _video_stems(settings: VideoSettings, seed: int) -> list[str]:
    return [f"{i:02d}_{_slug(prompt)}_seed{seed}" for i, prompt in enumerate(settings.prompts)]


def _slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def run_pipeline_infer(
    resolved: Target,
    root: Path,
    request: VideoRequest,
    *,
    target: str,
    out: Path | None,
    seed: int,
    device: torch.device,
    attention: Attention,
    log_to_mlflow: bool,
    compile: bool,
    precision: str = "auto",
) -> InferResult:
    """Generate a pipeline trial's videos for the request with SLA on, write and log them."""
    info = read_pipeline(root)
    settings = video_defaults(resolved, root).asked(request)
    check_settings(settings, info, resolved.name)  # before anything loads or is written
    out_dir = Path(out) if out is not None else default_out(resolved, attention, seed)
    OutputFolder.claim(out_dir).check(video_files(settings, seed))  # may infer write them there
    started = time.perf_counter()
    trial = load_pipeline_trial(resolved, root, attention=attention, device=device)
    if attention == "dense" and trial.sla is not None:
        warn_dense(resolved.name, trial.sla)
    pipe = trial.pipeline(device)
    load_s = time.perf_counter() - started
    if trial.handle is not None:
        trial.handle.reset_counts()
    seconds: list[float] = []
    compute = resolve_precision(precision, device)
    with contextlib.ExitStack() as scope:
        if compile:
            scope.enter_context(compiled_blocks(trial.transformer))
        for expert in expert_modules(trial.transformer):  # WanPipeline calls each expert itself
            scope.enter_context(autocast_forward(expert, device, compute))
        videos = generate_videos(
            pipe, settings, seed=seed, max_text_len=info.max_text_len, seconds=seconds
        )
    sla_calls, fallbacks = checked_sla_counts(trial.handle, resolved.name)

    files = write_videos(out_dir, videos, settings, seed=seed)
    summary = {
        "target": target, "trial": resolved.trial_id, "mlflow_run_id": resolved.run_id,
        "attention": attention, "sla": None if trial.sla is None else trial.sla.to_dict(),
        "device": str(device), "seed": seed, "generation": settings.to_dict(),
        "max_text_len": info.max_text_len, "source": trial.source, "sla_calls": sla_calls,
        "fallbacks": fallbacks, "compile": compile, "videos": [f.name for f in files if f.suffix == ".mp4"],
        "precision": compute,
        "seconds": {"load": load_s, "per_video": seconds},  # the first video's includes compiling
    }  # fmt: skip
    files.append(out_dir / SUMMARY_FILE)
    files[-1].write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    print(f"videos: {len(settings.prompts)} (MP4 + frame grid each) in {out_dir}")
    if attention == "sla":
        print(
            f"SLA: {sla_calls} attention calls through SLA; dense fallbacks: {fallbacks or 'none'}"
        )
    artifact_path = f"videos/{attention}-seed{seed}"
    logged = log_to_mlflow_run(resolved, out_dir, artifact_path) if log_to_mlflow else None
    return InferResult(out_dir, files, attention, sla_calls, fallbacks, logged, summary)
