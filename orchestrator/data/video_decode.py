"""Decoding one clip: every frame of a video with its timing, resampled to a frame rate, or an
image as a clip of one frame; and a frame resized to cover the training size and centre-cropped
(see orchestrator.data.videos for the rules)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image, ImageOps

from orchestrator.data.media_bounds import (
    ALLOWED,
    MediaError,
    check_declared,
    check_frame_count,
    check_size,
    kind,
)

if TYPE_CHECKING:
    import av

EPS = 1e-6  # seconds: timestamps within this of a sample time count as on it

T = TypeVar("T")


def probe(path: Path, fps: float | None) -> tuple[int, str]:
    """(frames after resampling to fps, how they came about): decodes the whole file."""
    if kind(path) == "image":
        read_image(path)
        return 1, "an image is 1 frame"
    with contextlib.closing(video_frames(path)) as frames:
        timed = [(start, duration, None) for start, duration, _ in frames]  # frames freed here
    if not timed:
        raise MediaError("no frame could be decoded: the file is damaged or truncated")
    available = sum(1 for _ in resample(timed, fps))
    how = f"{available} frame(s)" + (f" at {fps:g} fps of {len(timed)} decoded" if fps else "")
    import av  # heavy: PyAV, imported where a video is read, so the digits source runs without it

    with av.open(str(path)) as container:  # opened and decoded a moment ago
        listed = container.streams.video[0].frames
    if listed > len(timed):
        how += f" (its container lists {listed}: truncated?)"
    return available, how


def video_frames(path: Path) -> Iterator[tuple[float, float, av.VideoFrame]]:
    """(start in seconds from the first frame, duration in seconds, frame), in display order.

    A frame without a duration lasts 1 / the stream's frame rate (or as long as the one before).
    """
    import av  # heavy: PyAV, imported where a video is read, so the digits source runs without it

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"holds no video stream ({ALLOWED})")
            stream = container.streams.video[0]
            check_declared(stream, container)
            stream.thread_type = "AUTO"  # decoding is bit-exact whatever the threading
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            first, duration = None, 1.0 / rate if rate else 0.0
            for count, frame in enumerate(container.decode(stream)):
                check_frame_count(count)
                if frame.time is None:
                    raise MediaError("a frame without a timestamp: remux the file with FFmpeg")
                first = frame.time if first is None else first
                if frame.duration and frame.time_base:
                    duration = float(frame.duration * frame.time_base)
                yield frame.time - first, duration, frame
    except av.FFmpegError as exc:
        raise MediaError(
            f"cannot be decoded ({type(exc).__name__}: {exc}): damaged, truncated or not a "
            f"video FFmpeg reads ({ALLOWED})"
        ) from exc


def resample(timed: Iterable[tuple[float, float, T]], fps: float | None) -> Iterator[T]:
    """The item on screen at each time i / fps: the last one starting at or before it.

    timed: (start, duration, item) in display order, the first starting at 0.
    """
    if fps is None:
        yield from (item for _, _, item in timed)
        return
    i, current, end = 0, None, 0.0
    for start, duration, item in timed:
        while i / fps < start - EPS:  # never true for the first item (start 0)
            yield current
            i += 1
        current, end = item, start + duration
    while i / fps < end - EPS:
        yield current
        i += 1


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright per its EXIF orientation; alpha is dropped."""
    try:
        with Image.open(path) as image:
            check_size(*image.size)  # from the header: nothing decoded yet
            return np.array(ImageOps.exif_transpose(image).convert("RGB"))  # writable
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise MediaError(f"not a readable image ({exc}); {ALLOWED}") from exc


def cover_crop(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(h, w, 3) uint8 -> (3, H, W) float32 in [-1, 1]: resize to cover (H, W), centre-crop."""
    height, width = size
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()  # (3, h, w)
    h, w = x.shape[1:]
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    if (rh, rw) != (h, w):
        x = F.interpolate(x[None], size=(rh, rw), mode="bicubic", antialias=True)[0]
    top, left = (rh - height) // 2, (rw - width) // 2
    x = x[:, top : top + height, left : left + width]
    return (x / 127.5 - 1.0).clamp(-1.0, 1.0).contiguous()
