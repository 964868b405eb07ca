"""The user's own clips from a folder, validated up front with every problem named at once.

Layout: a folder holding clips, sorted by name, in either (or both) forms
  - `<name>.pt`: one tensor (C, F, H, W) (latents or pixels, used as is) or (F, H, W) (grayscale,
    replicated to the model's C channels), saved with torch.save; read with weights_only=True.
  - `<name>/`: a subfolder of PNG frames (sorted by file name), converted to grayscale, scaled
    from [0, 255] to [-1, 1] and replicated to C channels.
Every clip must have the same (F, H, W); H and W must be even (2x2 patches). The last
`num_val` clips (sorted by name) are held out for validation. Labels are all 0 (one prompt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

SPLITS = ("train", "val")


class FolderDataError(ValueError):
    """A data folder that cannot be used; the message lists every problem found."""


class FolderClips(Dataset):
    """Clips (C, F, H, W) loaded from a folder, label 0 each; see the module docstring."""

    def __init__(
        self, root: str | Path, *, channels: int, split: str = "train", num_val: int = 1
    ) -> None:
        root = Path(root).expanduser()
        if split not in SPLITS:
            raise ValueError(f"split ({split!r}) must be one of {', '.join(SPLITS)}")
        clips, names = load_folder(root, channels=channels)
        if not isinstance(num_val, int) or not 1 <= num_val < len(clips):
            raise FolderDataError(
                f"data folder {root}: num_val ({num_val!r}) must be in [1, {len(clips) - 1}] for its "
                f"{len(clips)} clips (at least one clip to train on and one held out)"
            )
        cut = len(clips) - num_val
        self.root = root
        self.names = names[:cut] if split == "train" else names[cut:]
        self.clips = clips[:cut] if split == "train" else clips[cut:]
        self.frames, self.size = self.clips[0].shape[1], self.clips[0].shape[2]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.clips[index], 0


def clip_shape(root: str | Path, *, channels: int) -> tuple[int, int, int]:
    """(F, H, W) of the clips in a folder (validating the whole folder)."""
    clips, _ = load_folder(Path(root).expanduser(), channels=channels)
    _, f, h, w = clips[0].shape
    return f, h, w


def load_folder(root: Path, *, channels: int) -> tuple[list[torch.Tensor], list[str]]:
    """Load and validate every clip; raise FolderDataError listing all problems."""
    if not root.exists():
        raise FolderDataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise FolderDataError(f"data folder {root} is not a directory")
    entries = sorted(p for p in root.iterdir() if p.suffix == ".pt" or p.is_dir())
    if not entries:
        raise FolderDataError(
            f"data folder {root} holds no clips: expected <name>.pt tensor files (C, F, H, W) or "
            "(F, H, W), or subfolders of PNG frames"
        )
    errors: list[str] = []
    clips: list[torch.Tensor] = []
    names: list[str] = []
    for path in entries:
        try:
            clip = _load_pt(path, channels) if path.suffix == ".pt" else _load_pngs(path, channels)
        except FolderDataError as exc:
            errors.append(str(exc))
            continue
        clips.append(clip)
        names.append(path.name)
    if clips:
        want = tuple(clips[0].shape[1:])
        errors += [
            f"{name}: shape (F, H, W) = {tuple(c.shape[1:])} differs from {names[0]}'s {want}"
            for name, c in zip(names, clips, strict=True)
            if tuple(c.shape[1:]) != want
        ]
        if want[1] % 2 or want[2] % 2:
            errors.append(f"clip height and width {want[1:]} must be even (the model patches 2x2)")
    if not errors and len(clips) < 2:
        errors.append("only 1 clip found; at least 2 are needed (one is held out for validation)")
    if errors:
        raise FolderDataError(f"data folder {root} is not usable:\n  - " + "\n  - ".join(errors))
    return clips, names


def _load_pt(path: Path, channels: int) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types; name the file and the cause
        raise FolderDataError(
            f"{path.name}: not a tensor file readable with weights_only=True ({exc})"
        ) from exc
    if not isinstance(value, torch.Tensor):
        raise FolderDataError(f"{path.name}: holds a {type(value).__name__}, expected one tensor")
    if not value.is_floating_point():
        raise FolderDataError(f"{path.name}: dtype {value.dtype} is not a floating point type")
    if value.dim() == 3:
        value = value.unsqueeze(0).expand(channels, *value.shape)
    elif value.dim() != 4:
        raise FolderDataError(
            f"{path.name}: shape {tuple(value.shape)} is not (C, F, H, W) or (F, H, W)"
        )
    if value.shape[0] != channels:
        raise FolderDataError(
            f"{path.name}: {value.shape[0]} channels, the model takes {channels} (or give (F, H, W))"
        )
    if not torch.isfinite(value).all():
        raise FolderDataError(f"{path.name}: contains NaN or infinite values")
    return value.float().contiguous()


def _load_pngs(folder: Path, channels: int) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    if not files:
        raise FolderDataError(f"{folder.name}/: a subfolder without PNG frames")
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("L"), dtype=np.float32) / 127.5 - 1.0)
        except OSError as exc:
            raise FolderDataError(f"{folder.name}/{file.name}: not a readable PNG ({exc})") from exc
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise FolderDataError(f"{folder.name}/: frames differ in size {sorted(sizes)}")
    clip = torch.from_numpy(np.stack(frames))  # (F, H, W)
    return clip.unsqueeze(0).expand(channels, *clip.shape).contiguous()
