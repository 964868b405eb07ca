"""Moving handwritten digits: short video clips made from scikit-learn's digits data set.

Each clip shows one real handwritten digit (sklearn.datasets.load_digits: 1797 8x8 scans that
ship inside scikit-learn, nothing is downloaded) moving over a dark canvas with constant velocity,
bouncing off the edges. A clip is a float32 tensor (C, F, H, W) in [-1, 1], used directly as the
transformer's latent input (no VAE): channel 0 holds the frames, channel c the same frames at
intensity 1 - c / (2 C), so every channel carries the digit. The clip's class label is the digit.

Deterministic: clip i of a split depends only on (seed, split, i). The digit images are split once
(a fixed permutation, independent of the seed) into train and val, so val digits are never trained
on, whatever the seed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import Dataset

SPLITS = ("train", "val")
VAL_FRACTION = 0.2
_SPLIT_SEED = 20251129  # fixed: the train/val partition of the digit images never moves
_SPLIT_IDS = {"train": 0, "val": 1}


@functools.lru_cache(maxsize=1)
def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as float32 (N, 8, 8) in [0, 1] and their labels (N,)."""
    table = _digits_table()
    images = table[:, :-1].reshape(-1, 8, 8)
    return (images / 16.0).astype(np.float32), table[:, -1].astype(np.int64)


DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # inside the sklearn package


def _digits_table() -> np.ndarray:
    """The digits as scikit-learn ships them, a float64 row per scan (64 pixels, then the
    label): its gzipped CSV read as load_digits reads it (np.loadtxt, ","), without importing
    scikit-learn, whose datasets module loads scipy (seconds in every trial's worker, on its
    start-up path). load_digits itself where this scikit-learn keeps the file elsewhere."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = Path(roots[0]).joinpath(*DIGITS_FILE) if roots else None
    if path is None or not path.is_file():
        # heavy: scikit-learn's datasets module loads scipy; only the digits source needs it
        from sklearn.datasets import load_digits

        digits = load_digits()
        return np.column_stack([digits.data, digits.target])
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return np.loadtxt(f, delimiter=",")


@functools.lru_cache(maxsize=8)
def _split_digits(split: str, digit_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The split's digit images upscaled to (n, digit_size, digit_size), and their labels."""
    images, labels = _digit_images()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
    n_val = int(round(VAL_FRACTION * len(images)))
    chosen = order[n_val:] if split == "train" else order[:n_val]
    small = torch.from_numpy(images[chosen]).unsqueeze(1)  # (n, 1, 8, 8)
    if digit_size != 8:
        small = F.interpolate(
            small, size=(digit_size, digit_size), mode="bilinear", align_corners=False
        )
    return small.squeeze(1).clamp(0, 1).numpy(), labels[chosen]


def default_digit_size(size: int) -> int:
    """Digit side for a canvas side: half the canvas, between 8 and 16 pixels (never past the canvas)."""
    return min(size, max(8, min(16, size // 2)))


class DigitsClips(Dataset):
    """Clips (C, F, H=size, W=size) of one moving handwritten digit, with its class label.

    Args:
        num_clips: clips in this split (the dataset's length).
        frames: F, frames per clip.
        size: canvas side H = W in pixels (even: the transformer's patch is 2x2).
        channels: C, the transformer's in_channels.
        split: "train" or "val" (disjoint digit images).
        seed: clips differ per seed; identical for the same (seed, split, index).
        digit_size: side of the upscaled digit; default half the canvas, in [8, 16].
    """

    def __init__(
        self,
        *,
        num_clips: int,
        frames: int,
        size: int,
        channels: int,
        split: str = "train",
        seed: int = 0,
        digit_size: int | None = None,
    ) -> None:
        digit_size = default_digit_size(size) if digit_size is None else digit_size
        errors = []
        for name, value in (
            ("num_clips", num_clips),
            ("frames", frames),
            ("size", size),
            ("channels", channels),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                errors.append(f"{name} ({value!r}) must be a positive integer")
        if split not in SPLITS:
            errors.append(f"split ({split!r}) must be one of {', '.join(SPLITS)}")
        if isinstance(size, int) and size % 2:
            errors.append(f"size ({size}) must be even: the transformer patches 2x2 pixels")
        if not isinstance(digit_size, int) or not 1 <= digit_size <= (
            size if isinstance(size, int) else 0
        ):
            errors.append(f"digit_size ({digit_size!r}) must be an integer in [1, size={size}]")
        if errors:
            raise ValueError("; ".join(errors))
        self.num_clips, self.frames, self.size, self.channels = num_clips, frames, size, channels
        self.split, self.seed, self.digit_size = split, seed, digit_size
        self._digits, self._labels = _split_digits(split, digit_size)
        # Channel c at intensity 1 - c / (2C): distinct but all carrying the digit.
        self._scales = 1.0 - np.arange(channels, dtype=np.float32) / (2.0 * channels)

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range [0, {self.num_clips})")
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        which = int(rng.integers(len(self._digits)))
        digit, label = self._digits[which], int(self._labels[which])
        span = self.size - self.digit_size  # top-left corner moves in [0, span]
        pos = rng.uniform(0, span, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.5, 1.5) * max(1.0, self.size / 16)  # pixels per frame
        vel = speed * np.array([np.sin(angle), np.cos(angle)])
        frames = np.zeros((self.frames, self.size, self.size), dtype=np.float32)  # (F, H, W)
        for f in range(self.frames):
            y, x = (int(round(p)) for p in pos)
            frames[f, y : y + self.digit_size, x : x + self.digit_size] = digit
            pos, vel = _bounce(pos + vel, vel, span)
        clip = self._scales[:, None, None, None] * frames[None]  # (C, F, H, W) in [0, 1]
        return torch.from_numpy(clip * 2.0 - 1.0), label


def _bounce(pos: np.ndarray, vel: np.ndarray, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Reflect a position that left [0, span] back inside and flip that velocity component."""
    pos, vel = pos.copy(), vel.copy()
    for axis in range(2):
        if span <= 0:
            pos[axis] = 0.0
            continue
        while not 0 <= pos[axis] <= span:
            pos[axis] = -pos[axis] if pos[axis] < 0 else 2 * span - pos[axis]
            vel[axis] = -vel[axis]
    return pos, vel
