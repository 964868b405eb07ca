"""Samples from fixed seeds, and how they are written: PNG frame grids and an animated GIF per clip.

The inputs are a pure function of (seed, number of samples, clip shape): clip i gets class
i mod num_classes and its starting noise comes from one CPU generator seeded with `seed`, so an
SLA trial, the full-attention control and `--attention dense` all start from exactly the same
noise and "prompts" (the recipe's fixed class embeddings), whatever the device.

    noise, labels = sample_inputs(settings, num_samples=4, seed=0)
    clips = generate(model, settings, noise, labels, device=torch.device("cpu"))
    files = write_samples(clips, noise, labels, out_dir)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from orchestrator.infer.outputs import OutputFolder
from orchestrator.recipe.config import autocast_dtype, resolve_mixed_precision
from orchestrator.recipe.flow_matching import class_prompts, euler_sample

TENSOR_FILE = "samples.safetensors"  # the raw clips: the bit-for-bit comparison reads these
SUMMARY_FILE = "samples.json"
UPSCALE = 4  # latent pixels are tiny (16x16 for the tiny preset): enlarge for viewing
GIF_FRAME_MS = 200


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """Everything generation needs besides the model; stored in an export as inference.json."""

    channels: int  # C of a clip (the model's in_channels)
    frames: int  # F
    size: int  # H = W
    text_len: int  # L of the class "prompt" embedding
    text_dim: int
    num_classes: int  # 10 for the digits data, 1 for a folder of the user's clips (<= 10)
    sample_steps: int  # Euler steps of the flow ODE
    timestep_shift: float
    mixed_precision: str  # the trial's: "auto" | "no" | "bf16" | "fp16"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationSettings:
        """Build from a mapping; missing or unknown keys are one ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(values))
        unknown = sorted(set(values) - names)
        if missing or unknown:
            raise ValueError(
                f"generation settings: missing {missing or 'none'}, unknown {unknown or 'none'}"
            )
        return cls(**values)


def sample_inputs(
    settings: GenerationSettings, *, num_samples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise (n, C, F, H, W) float32 on the CPU, class labels (n,) int64): fixed by the seed."""
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(f"num_samples ({num_samples!r}) must be a positive integer")
    generator = torch.Generator().manual_seed(seed)
    shape = (num_samples, settings.channels, settings.frames, settings.size, settings.size)
    noise = torch.randn(shape, generator=generator)
    labels = torch.arange(num_samples) % settings.num_classes
    return noise, labels


def inference_autocast(
    settings: GenerationSettings, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager]:
    """The trial's precision on CUDA (bf16 for "auto", as in training); float32 on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext
    dtype = autocast_dtype(resolve_mixed_precision(settings.mixed_precision, cuda=True))
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def generate(
    model: nn.Module,
    settings: GenerationSettings,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 4,
) -> torch.Tensor:
    """Euler-sample one clip per noise tensor; float32 (n, C, F, H, W) on the CPU."""
    prompts = class_prompts(settings.text_len, settings.text_dim)  # the recipe's own ten "prompts"
    autocast = inference_autocast(settings, device)
    model.eval()
    out = []
    for start in range(0, noise.shape[0], batch_size):
        chunk = noise[start : start + batch_size].to(device)
        context = prompts[labels[start : start + batch_size]].to(device)
        clips = euler_sample(
            model, chunk, context, steps=settings.sample_steps, shift=settings.timestep_shift,
            autocast=autocast,
        )  # fmt: skip
        out.append(clips.float().cpu())
    return torch.cat(out)


def to_uint8_frames(clip: torch.Tensor) -> np.ndarray:
    """(C, F, H, W) in [-1, 1] -> (F, H*UPSCALE, W*UPSCALE) uint8 frames of channel 0."""
    frames = ((clip[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()  # (F, H, W)
    return frames.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)


def write_samples(
    clips: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor, out_dir: Path
) -> list[Path]:
    """Per clip a PNG of its frames side by side and a GIF, grid.png (one clip per row) and
    samples.safetensors (clips, noise, labels); returns the paths written. out_dir's earlier
    infer outputs are replaced, nothing else in it is touched (orchestrator.infer.outputs);
    samples.json, written next by write_summary, is recorded as this run's too."""
    stems = [f"clip{i:02d}_class{label}" for i, label in enumerate(labels.tolist())]
    names = [f"{stem}{ext}" for stem in stems for ext in (".png", ".gif")]
    OutputFolder.claim(out_dir).replace([*names, "grid.png", TENSOR_FILE, SUMMARY_FILE])
    written = []
    rows = []
    for clip, name in zip(clips, stems, strict=True):
        frames = to_uint8_frames(clip)  # (F, h, w)
        stem = out_dir / name
        gap = np.full((frames.shape[1], UPSCALE), 255, dtype=np.uint8)  # white bar between frames
        row = np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)
        rows.append(row)
        Image.fromarray(row).save(stem.with_suffix(".png"))  # uint8 (h, w): mode "L"
        images = [Image.fromarray(f) for f in frames]
        images[0].save(
            stem.with_suffix(".gif"), save_all=True, append_images=images[1:],
            duration=GIF_FRAME_MS, loop=0,
        )  # fmt: skip
        written += [stem.with_suffix(".png"), stem.with_suffix(".gif")]
    bar = np.full((UPSCALE, rows[0].shape[1]), 255, dtype=np.uint8)  # white bar between clips
    Image.fromarray(np.concatenate([x for r in rows for x in (r, bar)][:-1], axis=0)).save(
        out_dir / "grid.png"
    )
    written.append(out_dir / "grid.png")
    tensors = {
        "clips": clips.contiguous(),
        "noise": noise.contiguous(),
        "labels": labels.contiguous(),
    }
    save_file(tensors, str(out_dir / TENSOR_FILE))
    written.append(out_dir / TENSOR_FILE)
    return written


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """samples.json: what was generated, from what, and the SLA counters."""
    path = out_dir / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return path
