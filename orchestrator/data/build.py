"""Build the train and val clip datasets for a model, and collate indices into a batch."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .digits_clips import DigitsClips
from .folder import FolderClips


def build_datasets(
    source: str,
    *,
    channels: int,
    frames: int,
    size: int,
    num_train: int,
    num_val: int,
    seed: int,
) -> tuple[Dataset, Dataset]:
    """(train, val) datasets of (clip (C, F, H, W), label) items.

    source "digits": moving handwritten digits of the given frames and size; otherwise a folder
    of the user's clips (frames and size come from the clips; the last num_val are held out).
    """
    if source == "digits":
        common = {"frames": frames, "size": size, "channels": channels, "seed": seed}
        return (
            DigitsClips(num_clips=num_train, split="train", **common),
            DigitsClips(num_clips=num_val, split="val", **common),
        )
    return (
        FolderClips(source, channels=channels, split="train", num_val=num_val),
        FolderClips(source, channels=channels, split="val", num_val=num_val),
    )


def collate(
    dataset: Dataset, indices: list[int], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the clips (B, C, F, H, W) and labels (B,) of the given dataset indices; a dataset
    that draws its items (encoded clips: the VAE posterior) draws them from `generator`."""
    draw = getattr(dataset, "draw", None) if generator is not None else None
    items = [draw(i, generator) if draw else dataset[i] for i in indices]
    return torch.stack([clip for clip, _ in items]), torch.tensor([label for _, label in items])
