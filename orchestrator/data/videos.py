"""A folder of captioned clips: read, validate, decode, and write videos.

Folder format (the imagefolder/videofolder and musubi-tuner conventions):

- Media files at the top level of the folder, taken in order of file name; subfolders and other
  files are ignored. Videos: .mp4, .webm, .mov, .gif (any codec FFmpeg decodes). Images: .png,
  .jpg, .jpeg, .webp, each a clip of one frame. Extensions match in any case.
- Every media file has exactly one caption, from either
  - a sidecar text file beside it with the same stem: `clip.mp4` + `clip.txt`; or
  - a row of `metadata.jsonl` (one JSON object per line) or `metadata.csv` (with a header row),
    whose `file_name` names the file (a name in the folder, no subfolder) and whose `caption`,
    `text` or `prompt` column holds the caption (the first of those present is used).
  Both kinds may be mixed in one folder, but a file captioned twice (a sidecar and a metadata
  row, or two rows) is an error: there is no precedence to guess. Caption and metadata files
  are UTF-8 (a byte-order mark is allowed); captions are stripped of surrounding whitespace and
  must not be empty.
- A video must decode with PyAV and hold at least `frames` frames after resampling to `fps`.
  Clips that are too short are errors, or, with short="skip", left out with a note.

`scan_folder` checks the whole folder before training starts: it decodes every frame of every
video (container frame counts are not trusted: a truncated file often still lists them all) and
raises one VideoDataError that lists every problem, one line each, starting with the file.

`decode_clip` turns one clip into a training tensor:
- Resampling to a frame rate: output frame i is the frame on screen at time i / fps (counted
  from the first frame), i.e. the last frame whose presentation time is at or before i / fps;
  the clip lasts until the end of its last frame. Without fps every decoded frame is kept. The
  first `frames` frames are used.
- Size: each frame is scaled (bicubic, antialiased), keeping its aspect ratio, to the smallest
  size that covers the target (H, W), then the centre (H, W) is cropped out.

Captions are read in captions.py, the header bounds are in media_bounds.py and decoding is in
video_decode.py. `write_video` (H.264 MP4) and `write_frame_grid` (PNG strip of frames) in
video_writers.py write clips back out, and `write_captions` writes captions in this format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from orchestrator.data.captions import (
    CAPTION_KEYS,
    MAX_CAPTION_CHARS,
    METADATA_FILES,
    collect_captions,
    one_caption,
)
from orchestrator.data.media_bounds import (
    ALLOWED,
    IMAGE_EXTS,
    MAX_FRAMES,
    MAX_PIXELS,
    MAX_SECONDS,
    MAX_SIDE,
    MEDIA_EXTS,
    VIDEO_EXTS,
    MediaError,
    kind,
)
from orchestrator.data.video_decode import cover_crop, probe, read_image, resample, video_frames

__all__ = [  # the names callers import from here, those of captions.py and media_bounds.py too
    "CAPTION_KEYS",
    "IMAGE_EXTS",
    "MAX_CAPTION_CHARS",
    "MAX_FRAMES",
    "MAX_PIXELS",
    "MAX_SECONDS",
    "MAX_SIDE",
    "MEDIA_EXTS",
    "METADATA_FILES",
    "SHORT_MODES",
    "VIDEO_EXTS",
    "ClipEntry",
    "VideoDataError",
    "decode_clip",
    "scan_folder",
]

SHORT_MODES = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class ClipEntry:
    """One usable media file of a folder."""

    path: Path
    caption: str
    kind: str  # "video" | "image"
    frames_available: int  # after fps resampling


class VideoDataError(ValueError):
    """A data folder that cannot be used; `problems` holds one line per problem."""

    def __init__(self, root: str | Path, problems: Iterable[str]) -> None:
        self.root = Path(root)
        self.problems = [" ".join(str(p).split("\n")) for p in problems]
        n = len(self.problems)
        super().__init__(f"data folder {root}: {n} problem(s):\n" + "\n".join(self.problems))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Ray ships exceptions between processes)
        return (type(self), (self.root, self.problems))


def scan_folder(
    root: str | Path, *, frames: int, fps: float | None = None, short: str = "error"
) -> tuple[list[ClipEntry], list[str]]:
    """The folder's usable clips (sorted by file name) and notes on clips left out.

    Decodes every media file and reads every caption; raises VideoDataError listing every
    problem at once (see the module docstring for the format). short="skip" leaves out clips
    with fewer than `frames` frames at `fps` (one note line each) instead of failing on them.
    """
    _check_args(frames=frames, fps=fps)
    if short not in SHORT_MODES:
        raise ValueError(f"short ({short!r}) must be one of {', '.join(SHORT_MODES)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise VideoDataError(root, [f"{root}: {what}"])
    problems: list[str] = []
    notes: list[str] = []
    media = _media_files(root, problems, notes)
    if not media and not problems:
        problems.append(f"{root}: holds no media files ({ALLOWED})")
    captions = collect_captions(root, {p.name for p in media}, problems)
    entries = []
    for path in media:
        caption = one_caption(path, captions.get(path.name, []), problems)
        if caption is not None and len(caption) > MAX_CAPTION_CHARS:
            notes.append(
                f"{path}: caption cut from {len(caption)} to {MAX_CAPTION_CHARS} characters "
                "(the text encoder reads a few hundred tokens of it at most)"
            )
            caption = caption[:MAX_CAPTION_CHARS]
        try:
            available, how = probe(path, fps)
        except MediaError as exc:
            problems.append(f"{path}: {exc}")
            continue
        if available < frames:
            if short == "skip":
                notes.append(f"{path}: left out: {how}, {frames} needed")
            else:
                problems.append(_short_line(path, how, frames=frames, fps=fps))
            continue
        if caption is not None:
            entries.append(ClipEntry(path, caption, kind(path), available))
    if media and notes and not entries and not problems:
        problems.append(f"{root}: no clip is long enough: all {len(notes)} were skipped")
    if problems:
        raise VideoDataError(root, problems)
    return entries, notes


def _media_files(root: Path, problems: list[str], notes: list[str]) -> list[Path]:
    """The folder's media files by name. A symbolic link is followed (clips are often linked
    in from elsewhere) and one that leads out of the folder is noted; one that leads nowhere, or
    to something that is not a regular file (a device, a FIFO), is a problem."""
    media = []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in MEDIA_EXTS:
            continue
        if path.is_symlink():
            target = path.resolve()
            if not target.is_file():
                what = "nothing" if not target.exists() else "something that is not a file"
                problems.append(f"{path}: a symbolic link to {what} ({target}): link a file")
                continue
            if root.resolve() not in target.parents:
                notes.append(f"{path}: a symbolic link out of the folder, to {target}: followed")
        elif not path.is_file():
            continue  # a folder named like a clip: subfolders are not read
        media.append(path)
    return media


def _check_args(*, frames: int, fps: float | None, size: tuple[int, int] | None = None) -> None:
    errors = []
    if not isinstance(frames, int) or isinstance(frames, bool) or frames <= 0:
        errors.append(f"frames ({frames!r}) must be a positive integer")
    if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        errors.append(f"fps ({fps!r}) must be a positive number or None (keep every frame)")
    if size is not None and not (
        len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)
    ):
        errors.append(f"size ({size!r}) must be (height, width), positive integers")
    if errors:
        raise ValueError("; ".join(errors))


def _short_line(path: Path, how: str, *, frames: int, fps: float | None) -> str:
    longer = "a longer clip, fewer frames" + (", a higher fps" if fps is not None else "")
    return f"{path}: {how}, {frames} needed: use {longer}, or short='skip' to leave it out"


def decode_clip(
    entry_or_path: ClipEntry | str | Path,
    *,
    frames: int,
    fps: float | None,
    size: tuple[int, int],
) -> torch.Tensor:
    """The first `frames` frames at `fps` as float32 (3, frames, H, W) in [-1, 1].

    Each frame is resized (bicubic, antialiased) to the smallest size that covers (H, W) with
    its aspect ratio kept, then centre-cropped to (H, W). fps=None keeps every decoded frame;
    an image is a clip of one frame. Deterministic. Raises VideoDataError naming the file when
    it cannot be decoded or is too short.
    """
    _check_args(frames=frames, fps=fps, size=size)
    path = Path(entry_or_path.path if isinstance(entry_or_path, ClipEntry) else entry_or_path)
    out: list[torch.Tensor] = []
    try:
        if kind(path) == "image":
            out.append(cover_crop(read_image(path), size))
        else:
            with contextlib.closing(video_frames(path)) as timed:
                for frame in itertools.islice(resample(timed, fps), frames):
                    out.append(cover_crop(frame.to_ndarray(format="rgb24"), size))
    except MediaError as exc:
        raise VideoDataError(path.parent, [f"{path}: {exc}"]) from exc
    if len(out) < frames:
        rate = f" at {fps:g} fps" if fps is not None and kind(path) == "video" else ""
        line = _short_line(path, f"{len(out)} frame(s){rate}", frames=frames, fps=fps)
        raise VideoDataError(path.parent, [line])
    return torch.stack(out, dim=1)  # (3, F, H, W)
