"""The inputs of benchmarks.wan_study: the experiment it runs, its prompt and captions, the
random-weight pipeline of Wan2.1-T2V-1.3B's released configs and the captioned MP4 clips."""

from __future__ import annotations

# Imports inside functions: `inputs` alone builds models and writes clips (diffusers, av);
# `run` and `summarize` import this module for its constants.
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "wan2.1-t2v-1.3b.yaml"
PROMPT = "A cat walks on the grass, realistic style."
CAPTIONS = (
    "a red ball rolls across a green field under a blue sky",
    "a yellow square slides over a purple gradient at dusk",
    "two circles orbit each other above a calm grey sea",
    "a white bar sweeps from left to right across a dark room",
    "colourful blobs drift slowly over a bright orange wall",
    "a small blue square bounces between the edges of the frame",
)
MEASURED_VALIDATION_STEPS = 10  # the device run's validation.steps (the experiment ships 30)
CLIPS = {"full": (6, 81, (480, 832)), "tiny": (4, 9, (32, 48))}  # count, frames, (H, W)


def write_pipeline(out: Path, *, tiny: bool, device: str) -> dict[str, Any]:
    """The random-weight pipeline of Wan2.1-T2V-1.3B's configs (or the tiny shape) into out."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    from benchmarks.full_shape_models import FULL, TINY
    from orchestrator.models.tiny_pipeline import build_tokenizer

    shape = TINY if tiny else FULL
    started = time.perf_counter()
    tokenizer = build_tokenizer(max_length=shape.text_len)
    text_config = {**shape.text_encoder, "decoder_start_token_id": 0}
    text_config["vocab_size"] = max(text_config["vocab_size"], len(tokenizer))
    with torch.device(device):
        torch.manual_seed(0)
        transformer = WanTransformer3DModel(**shape.transformer)
        vae = AutoencoderKLWan(**shape.vae)
        text_encoder = UMT5EncoderModel(UMT5Config(**text_config)).to(torch.bfloat16)
    scheduler = UniPCMultistepScheduler(  # Wan2.1-T2V-1.3B-Diffusers' scheduler/config.json
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=3.0, solver_order=2, solver_type="bh2", lower_order_final=True,
    )  # fmt: skip
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                       scheduler=scheduler, transformer=transformer)  # fmt: skip
    built = time.perf_counter()
    _write_new(out, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
    return {"build_s": built - started, "save_s": time.perf_counter() - built,
            "bytes": _tree_bytes(out), "device": device}  # fmt: skip


def clip_frames(index: int, frames: int, height: int, width: int) -> np.ndarray:
    """uint8 (frames, H, W, 3): a drifting colour gradient with a moving disc and a bar."""
    rng = np.random.default_rng(index)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    colours = rng.uniform(0.15, 0.85, size=(3, 3)).astype(np.float32)
    cy, cx, vy, vx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), *rng.uniform(-0.01, 0.01, 2)
    radius = rng.uniform(0.06, 0.15)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        phase = f / max(frames - 1, 1)
        base = (0.5 + 0.5 * np.sin(2 * np.pi * (x + y * 0.5 + phase)))[..., None]
        image = colours[0] * base + colours[1] * (1 - base)
        py, px = (cy + vy * f) % 1.0, (cx + vx * f) % 1.0
        disc = ((y - py) ** 2 + ((x - px) * width / height) ** 2) < radius**2
        image[disc] = colours[2]
        bar = np.abs(x - phase) < 0.02
        image[np.broadcast_to(bar, (height, width))] = 1.0
        out[f] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return out


def write_clips(out: Path, *, count: int, frames: int, size: tuple[int, int]) -> dict[str, Any]:
    """count captioned MP4 clips (frames + 8 frames at 16 fps, H x W) into out."""
    from orchestrator.data.video_writers import write_captions, write_video

    started = time.perf_counter()

    def write(tmp: Path) -> None:
        for i in range(count):
            write_video(tmp / f"clip_{i:03d}.mp4", clip_frames(i, frames + 8, *size), fps=16)
        names = [f"clip_{i:03d}.mp4" for i in range(count)]
        captions = {name: CAPTIONS[i % len(CAPTIONS)] for i, name in enumerate(names)}
        write_captions(tmp, captions, sidecar=names[::2])  # sidecars and metadata.jsonl rows

    _write_new(out, write)
    return {"count": count, "frames": frames + 8, "size": list(size), "fps": 16,
            "seconds": time.perf_counter() - started, "bytes": _tree_bytes(out)}  # fmt: skip


def _write_new(out: Path, write) -> None:
    """Run write(tmp) on a temporary folder beside out, then rename it to out (new or complete)."""
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another --work")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
