"""Real media files for tests: small clips of moving shapes, captioned folders, damaged files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from orchestrator.data.video_writers import write_captions, write_video


def moving_shapes(*, frames: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    """uint8 (F, H, W, 3): three coloured rectangles moving over a coloured background."""
    rng = np.random.default_rng(seed)
    height, width = size
    background = rng.integers(0, 256, size=3, dtype=np.uint8)
    video = np.broadcast_to(background, (frames, height, width, 3)).copy()
    for _ in range(3):
        colour = rng.integers(0, 256, size=3, dtype=np.uint8)
        h, w = (int(rng.integers(max(1, s // 6), max(2, s // 3))) for s in size)
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        vy, vx = rng.uniform(-2, 2, size=2)
        for f in range(frames):
            rows = np.arange(int(y + vy * f), int(y + vy * f) + h) % height
            cols = np.arange(int(x + vx * f), int(x + vx * f) + w) % width
            video[f][np.ix_(rows, cols)] = colour
    return video


def write_test_clip(
    path: str | Path,
    *,
    frames: int,
    size: tuple[int, int] = (32, 32),
    fps: float = 8,
    seed: int = 0,
) -> np.ndarray:
    """Write moving shapes as an H.264 MP4 (or a GIF, by suffix); returns the frames written.

    A GIF stores delays in hundredths of a second: give an fps that divides 100 for exact timing.
    """
    path = Path(path)
    video = moving_shapes(frames=frames, size=size, seed=seed)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(frame) for frame in video]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
        )
    else:
        write_video(path, video, fps=fps)
    return video


def write_test_image(
    path: str | Path, *, size: tuple[int, int] = (32, 32), seed: int = 0
) -> np.ndarray:
    """Write one frame of moving shapes as an image (format by suffix); returns its pixels."""
    pixels = moving_shapes(frames=1, size=size, seed=seed)[0]
    Image.fromarray(pixels).save(path)
    return pixels


def write_caption_folder(
    root: str | Path,
    n: int = 4,
    *,
    frames: int = 8,
    size: tuple[int, int] = (32, 32),
    fps: float = 8,
    seed: int = 0,
) -> dict[str, str]:
    """n MP4 clips clip_000.mp4, ... in root: even ones captioned by a sidecar .txt, odd ones by
    metadata.jsonl. Returns {file name: caption}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    captions = {}
    for i in range(n):
        name = f"clip_{i:03d}.mp4"
        write_test_clip(root / name, frames=frames, size=size, fps=fps, seed=seed + i)
        captions[name] = f"clip {i}: coloured shapes drifting"
    write_captions(root, captions, sidecar=list(captions)[::2])
    return captions


def truncate_file(path: str | Path, fraction: float = 0.5) -> Path:
    """Cut a file to the first `fraction` of its bytes (a download or copy that stopped)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
