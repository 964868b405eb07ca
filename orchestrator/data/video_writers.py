"""Writing what the video folders hold: H.264 MP4 clips, frame-grid PNGs (what the MLflow UI
shows inline) and captions in the sidecar/metadata.jsonl convention. Every file appears atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

GRID_GAP = 2  # white pixels between the frames of a frame grid
CRF = "18"  # libx264 constant rate factor: visually near-lossless


def write_video(path: str | Path, video: np.ndarray | torch.Tensor, *, fps: float) -> Path:
    """Write an H.264 MP4 (yuv420p, moov atom first) atomically; returns the path.

    video: uint8 numpy (F, H, W, 3), or a float tensor (3, F, H, W) in [-1, 1]. yuv420p needs
    an even height and width: an odd one gets its last row/column repeated once (padding, so no
    content is lost). Encoded with one thread: the same input gives the same bytes nearly always
    (about 1 write in 750 of a 16x16 clip came out coded differently in one long process).
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps ({fps!r}) must be a positive number")
    frames = _as_uint8_frames(video)
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    import av  # PyAV: imported where an MP4 is written, so frame grids and GIFs run without it

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1  # x264's output depends on its thread count
            stream.options = {"crf": CRF}
            for index, array in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts = index
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))  # flush the encoder

    return _replace_atomically(Path(path), write)


def write_frame_grid(
    path: str | Path, video: np.ndarray | torch.Tensor, *, max_frames: int = 8
) -> Path:
    """Write a PNG of up to max_frames evenly spaced frames side by side, atomically.

    video as for write_video. The image is H high and n * W + (n - 1) * GRID_GAP wide for n
    frames shown, with white gaps between them.
    """
    if not isinstance(max_frames, int) or max_frames <= 0:
        raise ValueError(f"max_frames ({max_frames!r}) must be a positive integer")
    frames = _as_uint8_frames(video)
    count, h = frames.shape[:2]
    picks = np.linspace(0, count - 1, min(count, max_frames)).round().astype(int)
    gap = np.full((h, GRID_GAP, 3), 255, dtype=np.uint8)
    grid = np.concatenate([x for i in picks for x in (gap, frames[i])][1:], axis=1)
    return _replace_atomically(Path(path), lambda tmp: Image.fromarray(grid).save(tmp, "PNG"))


def write_captions(
    root: str | Path, captions: Mapping[str, str], *, sidecar: Iterable[str]
) -> None:
    """Write captions the way scan_folder reads them: a <stem>.txt for each name in `sidecar`,
    rows of metadata.jsonl for the others (in the order given)."""
    root = Path(root)
    sidecar = set(sidecar)
    rows = []
    for name, caption in captions.items():
        if name in sidecar:
            (root / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        else:
            rows.append(json.dumps({"file_name": name, "caption": caption}, ensure_ascii=False))
    if rows:
        (root / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")


def _as_uint8_frames(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 (F, H, W, 3) from uint8 numpy (F, H, W, 3) or a float tensor (3, F, H, W) in [-1, 1]."""
    if isinstance(video, torch.Tensor) and video.is_floating_point() and video.dim() == 4:
        if video.shape[0] != 3:
            raise ValueError(f"video tensor {tuple(video.shape)} must be (3, F, H, W) RGB")
        video = ((video.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        video = video.permute(1, 2, 3, 0).numpy()  # (F, H, W, 3)
    if not (isinstance(video, np.ndarray) and video.dtype == np.uint8):
        raise ValueError(
            "video must be uint8 numpy (F, H, W, 3) or a float tensor (3, F, H, W) in [-1, 1], "
            f"got {type(video).__name__} {getattr(video, 'dtype', '')}"
        )
    if video.ndim != 4 or video.shape[3] != 3 or 0 in video.shape:
        raise ValueError(f"video array {video.shape} must be (F, H, W, 3) with F, H, W > 0")
    return np.ascontiguousarray(video)


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Write to <stem>.tmp<suffix> beside path, then rename it over path (removed on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
