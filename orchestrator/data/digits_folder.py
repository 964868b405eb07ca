"""A real captioned video folder of moving handwritten digits, for trying the folder pipeline.

`write_digits_folder(root, num_clips=8, frames=9, size=32)` writes `digit_0000.mp4`, ... (RGB
H.264 clips of `orchestrator.data.digits_clips.DigitsClips`, grey digits on black) captioned
like "a handwritten digit seven moving across a dark background": the even-numbered clips by a
sidecar `.txt`, the odd-numbered ones by rows of `metadata.jsonl`, so both caption forms of
`orchestrator.data.videos` are exercised. The folder is built in a hidden temporary folder
beside root and renamed into place: root either does not exist or is complete.
"""

from __future__ import annotations

import math
import shutil
import uuid
from pathlib import Path

from .digits_clips import DigitsClips
from .video_writers import write_captions, write_video

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_caption(label: int) -> str:
    """The caption of a clip of the digit `label`."""
    return f"a handwritten digit {DIGIT_NAMES[label]} moving across a dark background"


def write_digits_folder(
    root: str | Path,
    *,
    num_clips: int,
    frames: int,
    size: int,
    fps: float = 8.0,
    seed: int = 0,
) -> Path:
    """Write num_clips captioned MP4 clips (frames x size x size at fps) into a new folder root.

    The same arguments give the same captions byte for byte, and clips that decode to the same
    frames within about one 8-bit level (on the same PyAV build; x264 at one thread is nearly but
    not always byte-deterministic on tiny frames: about 1 write in 750 differed here). Raises
    FileExistsError if root exists (also when another writer finished it first).
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps ({fps!r}) must be a positive number")
    clips = DigitsClips(
        num_clips=num_clips, frames=frames, size=size, channels=1, split="train", seed=seed
    )  # validates num_clips, frames and size
    root = Path(root).expanduser()
    if root.exists():
        raise FileExistsError(f"{root} already exists: remove it or write the digits elsewhere")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex}"  # hidden, unique per writer
    tmp.mkdir()
    try:
        captions = {}
        for index in range(num_clips):
            clip, label = clips[index]  # (1, F, H, W) in [-1, 1]
            name = f"digit_{index:04d}.mp4"
            write_video(tmp / name, clip.expand(3, -1, -1, -1), fps=fps)  # grey as RGB
            captions[name] = digit_caption(label)
        write_captions(tmp, captions, sidecar=list(captions)[::2])
        _rename_new(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _rename_new(src: Path, dst: Path) -> None:
    """Rename the finished folder into place; never merge into a dst that appeared meanwhile."""
    try:
        src.rename(dst)
    except OSError as exc:
        if dst.exists():
            raise FileExistsError(f"{dst} was written by another writer meanwhile") from exc
        raise
