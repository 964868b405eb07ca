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

`write_video` (H.264 MP4) and `write_frame_grid` (PNG strip of frames) write clips back out, and
`write_captions` writes captions in this format.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import io
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import av

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".gif")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
MEDIA_EXTS = VIDEO_EXTS + IMAGE_EXTS
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_KEYS = ("caption", "text", "prompt")  # in order of precedence within one row
SHORT_MODES = ("error", "skip")
_EPS = 1e-6  # seconds: timestamps within this of a sample time count as on it
_ALLOWED = f"allowed: videos {' '.join(VIDEO_EXTS)}, images {' '.join(IMAGE_EXTS)}"
# Bounds on what one file may make the tool do, checked before the work is done:
MAX_CAPTION_CHARS = 8192  # longer captions are cut (noted): 512 tokens never need more
MAX_SIDE = 8192  # pixels per side of a video or image (declared size, before decoding)
MAX_PIXELS = 8192 * 4320  # pixels per frame (8K); RGB frames of at most about 106 MB
MAX_SECONDS = 4 * 3600.0  # a video's declared length
MAX_FRAMES = 200_000  # frames decoded from one video when its length is checked
# Caption characters refused: C0/C1 controls other than tab, newline and carriage return (NUL,
# terminal escapes) and the bidirectional overrides and isolates (they reorder displayed text)
_BIDI = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}

T = TypeVar("T")


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


class _MediaError(Exception):
    """A media file that cannot be decoded; the message says why."""


@dataclasses.dataclass(frozen=True)
class _Caption:
    source: str  # where it was read: "clip.txt", "metadata.jsonl line 3"
    text: str | None  # None: the caption is broken, and that was already reported


# ---- scanning -------------------------------------------------------------------------------


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
        problems.append(f"{root}: holds no media files ({_ALLOWED})")
    captions = _collect_captions(root, {p.name for p in media}, problems)
    entries = []
    for path in media:
        caption = _one_caption(path, captions.get(path.name, []), problems)
        if caption is not None and len(caption) > MAX_CAPTION_CHARS:
            notes.append(
                f"{path}: caption cut from {len(caption)} to {MAX_CAPTION_CHARS} characters "
                "(the text encoder reads a few hundred tokens of it at most)"
            )
            caption = caption[:MAX_CAPTION_CHARS]
        try:
            available, how = _probe(path, fps)
        except _MediaError as exc:
            problems.append(f"{path}: {exc}")
            continue
        if available < frames:
            if short == "skip":
                notes.append(f"{path}: left out: {how}, {frames} needed")
            else:
                problems.append(_short_line(path, how, frames=frames, fps=fps))
            continue
        if caption is not None:
            entries.append(ClipEntry(path, caption, _kind(path), available))
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


def _kind(path: Path) -> str:
    return "image" if path.suffix.lower() in IMAGE_EXTS else "video"


def _short_line(path: Path, how: str, *, frames: int, fps: float | None) -> str:
    longer = "a longer clip, fewer frames" + (", a higher fps" if fps is not None else "")
    return f"{path}: {how}, {frames} needed: use {longer}, or short='skip' to leave it out"


def _one_caption(path: Path, found: list[_Caption], problems: list[str]) -> str | None:
    """The caption of one media file, or None after reporting why there is none."""
    if not found:
        problems.append(
            f"{path}: no caption: add {path.with_suffix('.txt').name} beside it, or a row with "
            f"file_name {path.name!r} to metadata.jsonl or metadata.csv"
        )
        return None
    if len(found) > 1:
        places = " and ".join(c.source for c in found)
        problems.append(f"{path}: captioned {len(found)} times, by {places}: keep only one")
        return None
    return found[0].text


# ---- captions -------------------------------------------------------------------------------


def _collect_captions(
    root: Path, media: set[str], problems: list[str]
) -> dict[str, list[_Caption]]:
    """Every caption found for each media file name: its sidecar and its metadata rows."""
    captions: dict[str, list[_Caption]] = {}
    for name in sorted(media):
        sidecar = (root / name).with_suffix(".txt")
        if sidecar.is_file():
            text = _read_text(sidecar, problems, limit=4 * MAX_CAPTION_CHARS + 3)
            text = None if text is None else _nonempty(text.strip(), str(sidecar), problems)
            captions.setdefault(name, []).append(_Caption(sidecar.name, text))
    for file in METADATA_FILES:
        path = root / file
        text = _read_text(path, problems) if path.is_file() else None
        if text is None:
            continue
        parse = _jsonl_rows if file.endswith(".jsonl") else _csv_rows
        for where, name, caption in parse(path, text, problems):
            if name is not None and _names_media(name, root, media, f"{path} {where}", problems):
                captions.setdefault(name, []).append(_Caption(f"{file} {where}", caption))
    return captions


def _read_text(path: Path, problems: list[str], *, limit: int | None = None) -> str | None:
    """The file as UTF-8 text; with limit, only its first `limit` bytes (a character the limit
    cuts in half is dropped), so a huge caption file costs no more than a long caption."""
    with path.open("rb") as f:
        data = f.read() if limit is None else f.read(limit)
    try:
        # final=False: an incomplete character at the end (the limit's cut) is held back, not
        # an error; invalid bytes anywhere still are
        return codecs.getincrementaldecoder("utf-8-sig")().decode(
            data, final=limit is None or len(data) < limit
        )
    except UnicodeDecodeError as exc:
        problems.append(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset {exc.start}): "
            "save it as UTF-8"
        )
        return None


def _nonempty(text: str, where: str, problems: list[str]) -> str | None:
    if not text:
        problems.append(f"{where}: empty caption: write the clip's description")
        return None
    bad = next((i for i, c in enumerate(text) if _refused_char(c)), None)
    if bad is not None:
        problems.append(
            f"{where}: caption holds the control character U+{ord(text[bad]):04X} at character "
            f"{bad + 1}: remove it (control characters other than tab and newline, and "
            "bidirectional overrides, are refused)"
        )
        return None
    return text


def _refused_char(c: str) -> bool:
    code = ord(c)
    if c in "\t\n\r":
        return False
    return code < 0x20 or 0x7F <= code <= 0x9F or code in _BIDI


_Row = tuple[str, "str | None", "str | None"]  # (where: "line 3", file name, caption)


def _jsonl_rows(path: Path, text: str, problems: list[str]) -> list[_Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row, why = None, f"not valid JSON ({exc.msg}, column {exc.colno})"
        else:
            why = f"a JSON {type(row).__name__}, not an object"
        if not isinstance(row, dict):
            problems.append(
                f"{path} line {number}: {why}: each line must be one object like "
                '{"file_name": "clip.mp4", "caption": "..."}'
            )
            continue
        rows.append((f"line {number}", *_parse_row(row, f"{path} line {number}", problems)))
    return rows


def _csv_rows(path: Path, text: str, problems: list[str]) -> list[_Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="\0extra", strict=True)
    header = reader.fieldnames or []
    if "file_name" not in header or not any(key in header for key in CAPTION_KEYS):
        problems.append(
            f"{path}: header {header} must name the columns file_name and one of "
            f"{', '.join(CAPTION_KEYS)}"
        )
        return []
    rows = []
    try:
        for row in reader:
            where = f"line {reader.line_num}"
            if "\0extra" in row or None in row.values():
                n = len(header) + len(row.get("\0extra", [])) - list(row.values()).count(None)
                problems.append(f"{path} {where}: {n} fields, the header has {len(header)}")
                rows.append((where, row["file_name"] or None, None))  # named, but no caption
                continue
            rows.append((where, *_parse_row(row, f"{path} {where}", problems)))
    except csv.Error as exc:
        problems.append(
            f"{path} line {reader.line_num}: malformed CSV ({exc}); rows after it unread"
        )
    return rows


def _parse_row(
    row: Mapping[str, Any], where: str, problems: list[str]
) -> tuple[str | None, str | None]:
    """(file_name, caption) of a metadata row; None for what is missing (and reported)."""
    name = row.get("file_name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: file_name ({name!r}) must be the name of a media file")
        name = None
    key = next((k for k in CAPTION_KEYS if k in row), None)
    if key is None:
        problems.append(f"{where}: no caption: give a column caption, text or prompt")
        return name, None
    caption = row[key]
    if not isinstance(caption, str):
        problems.append(f"{where}: {key} ({caption!r}) must be a string")
        return name, None
    return name, _nonempty(caption.strip(), where, problems)


def _names_media(name: str, root: Path, media: set[str], where: str, problems: list[str]) -> bool:
    if name in media:
        return True
    if Path(name).name != name:
        why = "must be a file name in the folder itself (subfolders are not read)"
    elif (root / name).exists():
        why = f"is not a media file ({_ALLOWED})"
    else:
        why = f"does not exist in {root}"
    problems.append(f"{where}: file_name {name!r} {why}")
    return False


# ---- decoding -------------------------------------------------------------------------------


def _probe(path: Path, fps: float | None) -> tuple[int, str]:
    """(frames after resampling to fps, how they came about): decodes the whole file."""
    if _kind(path) == "image":
        _read_image(path)
        return 1, "an image is 1 frame"
    with contextlib.closing(_video_frames(path)) as frames:
        timed = [(start, duration, None) for start, duration, _ in frames]  # frames freed here
    if not timed:
        raise _MediaError("no frame could be decoded: the file is damaged or truncated")
    available = sum(1 for _ in _resample(timed, fps))
    how = f"{available} frame(s)" + (f" at {fps:g} fps of {len(timed)} decoded" if fps else "")
    import av  # PyAV: imported where a video is read, so the digits source runs without it

    with av.open(str(path)) as container:  # opened and decoded a moment ago
        listed = container.streams.video[0].frames
    if listed > len(timed):
        how += f" (its container lists {listed}: truncated?)"
    return available, how


def _video_frames(path: Path) -> Iterator[tuple[float, float, av.VideoFrame]]:
    """(start in seconds from the first frame, duration in seconds, frame), in display order.

    A frame without a duration lasts 1 / the stream's frame rate (or as long as the one before).
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _MediaError(f"holds no video stream ({_ALLOWED})")
            stream = container.streams.video[0]
            _check_declared(stream, container)
            stream.thread_type = "AUTO"  # decoding is bit-exact whatever the threading
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            first, duration = None, 1.0 / rate if rate else 0.0
            for count, frame in enumerate(container.decode(stream)):
                if count >= MAX_FRAMES:
                    raise _MediaError(
                        f"more than {MAX_FRAMES} frames: cut the clip to what training needs"
                    )
                if frame.time is None:
                    raise _MediaError("a frame without a timestamp: remux the file with FFmpeg")
                first = frame.time if first is None else first
                if frame.duration and frame.time_base:
                    duration = float(frame.duration * frame.time_base)
                yield frame.time - first, duration, frame
    except av.FFmpegError as exc:
        raise _MediaError(
            f"cannot be decoded ({type(exc).__name__}: {exc}): damaged, truncated or not a "
            f"video FFmpeg reads ({_ALLOWED})"
        ) from exc


def _check_size(width: int, height: int) -> None:
    """_MediaError for a frame size beyond MAX_SIDE / MAX_PIXELS (checked before decoding)."""
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise _MediaError(
            f"{width}x{height} pixels a frame is more than sla-sweep decodes (at most "
            f"{MAX_SIDE} a side and {MAX_PIXELS} pixels, 8K): scale it down first"
        )


def _check_declared(stream: av.video.stream.VideoStream, container: Any) -> None:
    """The video's declared frame size and length, before any frame is decoded."""
    _check_size(stream.codec_context.width, stream.codec_context.height)
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000  # av.time_base
    if seconds is not None and seconds > MAX_SECONDS:
        raise _MediaError(
            f"{seconds / 3600:.1f} hours long; at most {MAX_SECONDS / 3600:g} hours are read: "
            "cut the clip to what training needs"
        )


def _resample(timed: Iterable[tuple[float, float, T]], fps: float | None) -> Iterator[T]:
    """The item on screen at each time i / fps: the last one starting at or before it.

    timed: (start, duration, item) in display order, the first starting at 0.
    """
    if fps is None:
        yield from (item for _, _, item in timed)
        return
    i, current, end = 0, None, 0.0
    for start, duration, item in timed:
        while i / fps < start - _EPS:  # never true for the first item (start 0)
            yield current
            i += 1
        current, end = item, start + duration
    while i / fps < end - _EPS:
        yield current
        i += 1


def _read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright per its EXIF orientation; alpha is dropped."""
    try:
        with Image.open(path) as image:
            _check_size(*image.size)  # from the header: nothing decoded yet
            return np.array(ImageOps.exif_transpose(image).convert("RGB"))  # writable
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise _MediaError(f"not a readable image ({exc}); {_ALLOWED}") from exc


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
        if _kind(path) == "image":
            out.append(_cover_crop(_read_image(path), size))
        else:
            with contextlib.closing(_video_frames(path)) as timed:
                for frame in itertools.islice(_resample(timed, fps), frames):
                    out.append(_cover_crop(frame.to_ndarray(format="rgb24"), size))
    except _MediaError as exc:
        raise VideoDataError(path.parent, [f"{path}: {exc}"]) from exc
    if len(out) < frames:
        rate = f" at {fps:g} fps" if fps is not None and _kind(path) == "video" else ""
        line = _short_line(path, f"{len(out)} frame(s){rate}", frames=frames, fps=fps)
        raise VideoDataError(path.parent, [line])
    return torch.stack(out, dim=1)  # (3, F, H, W)


def _cover_crop(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
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


# ---- writing --------------------------------------------------------------------------------
