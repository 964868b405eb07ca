"""Validation videos of a pipeline trial: its model and the untouched base, from the same noise.

For every validation prompt and seed, the trial's transformer samples latents with classifier-free
guidance (Euler steps of the flow ODE, the pipeline's shift), the VAE decodes them, and the frames
are compared with the base's frames for the same prompt and noise: PSNR and SSIM, what the
sparse-attention papers report. The base's frames are computed once per sweep (the first trial
writes them into the sweep's base-reference directory; the others load them).

The VAE is loaded only to decode and freed right after, so between validations a trial holds the
transformer alone; its peak memory is measured and reported (val/decode_peak_mib on CUDA,
the process's RSS growth on the CPU).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.data.cache import TensorCache, key_of
from orchestrator.data.encoded import TEXTS
from orchestrator.data.video_writers import write_frame_grid, write_video
from orchestrator.recipe.config import ValidationConfig
from orchestrator.recipe.evaluate import psnr
from orchestrator.recipe.flow_matching import guided_euler_sample
from orchestrator.storage.local import file_lock

BASE_KIND = "validation_base"


@dataclasses.dataclass(frozen=True)
class VideoSet:
    """Decoded validation videos, (n, 3, F, H, W) float32 in [-1, 1], and what made each."""

    frames: torch.Tensor
    names: list[str]  # file-name stems, one per video: <index>_<prompt slug>_seed<S>


class VideoValidation:
    """The fixed validation inputs of a sweep and the decoding of what a model makes of them."""

    def __init__(
        self,
        cfg: ValidationConfig,
        manifest: dict[str, Any],
        *,
        frames: int,
        size: tuple[int, int],
        shift: float,
        device: torch.device,
        autocast: Callable,
    ) -> None:
        # models.pipeline_models loads diffusers' VAE and encoder classes: only pipeline trials
        from orchestrator.models.pipeline import read_pipeline
        from orchestrator.models.pipeline_models import pad_prompts

        self.cfg, self.shift, self.device, self.autocast = cfg, shift, device, autocast
        self.info = read_pipeline(manifest["pipeline"], weights=("transformer",))
        self.frames, self.size = cfg.frames or frames, _hw(cfg.size) or size
        cache = TensorCache(Path(manifest["cache"]))
        val = manifest["validation"]
        embeds = [cache.load(TEXTS, p["key"])["embed"] for p in val["prompts"]]
        negative = cache.load(TEXTS, val["negative"]["key"])["embed"]
        max_len = int(manifest["max_text_len"])
        prompts = pad_prompts([e.float() for e in embeds], max_len)
        shape = self.info.latent_shape(self.frames, *self.size)
        pairs = [(i, s) for i in range(len(embeds)) for s in cfg.seeds]
        self.context = torch.stack([prompts[i] for i, _ in pairs])
        self.negative = pad_prompts([negative.float()], max_len).expand(len(pairs), -1, -1)
        self.noise = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for _, s in pairs]
        )
        texts = [p["text"] for p in val["prompts"]]
        self.names = [f"{n:02d}_{_slug(texts[i])}_seed{s}" for n, (i, s) in enumerate(pairs)]
        self.key = {"prompts": texts, "seeds": list(cfg.seeds), "negative": cfg.negative_prompt,
                    "frames": self.frames, "size": list(self.size), "steps": cfg.steps,
                    "guidance": cfg.guidance_scale, "shift": shift, "pipeline": str(self.info.root)}  # fmt: skip

    def generate(self, model: nn.Module) -> torch.Tensor:
        """Latents (n, z, F', H', W') of `model` for every prompt and seed."""
        out = []
        for i in range(self.noise.shape[0]):
            out.append(
                guided_euler_sample(
                    model, self.noise[i : i + 1].to(self.device), self.context[i : i + 1].to(self.device),
                    self.negative[i : i + 1].to(self.device), steps=self.cfg.steps, shift=self.shift,
                    guidance=self.cfg.guidance_scale, autocast=self.autocast,
                ).cpu()
            )  # fmt: skip
        return torch.cat(out)

    def decode(self, latents: torch.Tensor) -> tuple[VideoSet, dict[str, float]]:
        """Frames of the latents, decoded by the VAE (loaded for this only), and the decode's
        time and peak memory."""
        from orchestrator.models.pipeline_models import decode_latents, load_vae  # diffusers

        started = time.perf_counter()
        with PeakMemory(self.device) as memory:
            vae = load_vae(self.info, device=self.device, dtype=torch.float32)
            frames = torch.cat(
                [
                    decode_latents(vae, self.info, latents[i : i + 1].to(self.device)).cpu()
                    for i in range(len(latents))
                ]
            )
            del vae
        seconds = time.perf_counter() - started
        return VideoSet(frames, self.names), {
            "perf/decode_s": seconds,
            "perf/decode_peak_mib": memory.peak_mib,
        }

    def base_videos(self, model: nn.Module, base_id: str, directory: Path | None) -> VideoSet:
        """The base's videos: computed once per sweep into `directory`, then loaded."""

        if directory is None:
            return self.decode(self.generate(model))[0]
        key = key_of({"base": base_id, **self.key})
        cache = TensorCache(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with file_lock(directory / f"{key[:16]}.lock"):
            entry = cache.get(
                BASE_KIND, key, lambda: {"frames": self.decode(self.generate(model))[0].frames}
            )
        return VideoSet(entry["frames"], self.names)

    def score(self, videos: VideoSet, base: VideoSet) -> dict[str, float]:
        """PSNR (dB) and SSIM of the trial's decoded frames against the base's, over all videos."""
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        def as_images(
            x: torch.Tensor,
        ) -> torch.Tensor:  # (n, 3, F, H, W) -> (n F, 3, H, W) in [0, 1]
            return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4).flatten(0, 1)

        value = ssim(as_images(videos.frames), as_images(base.frames), data_range=1.0)
        return {"val/video_psnr": psnr(videos.frames, base.frames), "val/video_ssim": float(value)}


def write_videos(videos: VideoSet, directory: Path, *, fps: float, prefix: str = "") -> list[Path]:
    """An MP4 and a frame-grid PNG per video into `directory` (what MLflow shows inline)."""

    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for frames, name in zip(videos.frames, videos.names, strict=True):
        files.append(write_video(directory / f"{prefix}{name}.mp4", frames, fps=fps))
        files.append(write_frame_grid(directory / f"{prefix}{name}.png", frames))
    return files


def _slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def _hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class PeakMemory:
    """Peak memory above the start of the block: CUDA's allocator peak, or on the CPU the process's
    resident set, sampled every 5 ms by a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mib = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        process = psutil.Process()
        self._start, self._high, self._stop = process.memory_info().rss, 0, threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._high = max(self._high, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            high = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            high = self._high
        self.peak_mib = max(0.0, (high - self._start) / 2**20)
