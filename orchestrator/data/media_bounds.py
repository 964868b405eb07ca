"""What a media file of a clip folder may be: its extensions, and the bounds on what one file may
make the tool do, checked from the file's header before any frame is decoded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import av

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".gif")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
MEDIA_EXTS = VIDEO_EXTS + IMAGE_EXTS
ALLOWED = f"allowed: videos {' '.join(VIDEO_EXTS)}, images {' '.join(IMAGE_EXTS)}"
# Bounds on what one file may make the tool do, checked before the work is done:
MAX_SIDE = 8192  # pixels per side of a video or image (declared size, before decoding)
MAX_PIXELS = 8192 * 4320  # pixels per frame (8K); RGB frames of at most about 106 MB
MAX_SECONDS = 4 * 3600.0  # a video's declared length
MAX_FRAMES = 200_000  # frames decoded from one video when its length is checked


class MediaError(Exception):
    """A media file that cannot be decoded; the message says why."""


def kind(path: Path) -> str:
    """The kind of a media file by its extension: "image" or "video"."""
    return "image" if path.suffix.lower() in IMAGE_EXTS else "video"


def check_size(width: int, height: int) -> None:
    """MediaError for a frame size beyond MAX_SIDE / MAX_PIXELS (checked before decoding)."""
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise MediaError(
            f"{width}x{height} pixels a frame is more than sla-sweep decodes (at most "
            f"{MAX_SIDE} a side and {MAX_PIXELS} pixels, 8K): scale it down first"
        )


def check_declared(stream: av.video.stream.VideoStream, container: Any) -> None:
    """The video's declared frame size and length, before any frame is decoded."""
    check_size(stream.codec_context.width, stream.codec_context.height)
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000  # av.time_base
    if seconds is not None and seconds > MAX_SECONDS:
        raise MediaError(
            f"{seconds / 3600:.1f} hours long; at most {MAX_SECONDS / 3600:g} hours are read: "
            "cut the clip to what training needs"
        )


def check_frame_count(count: int) -> None:
    """MediaError once a video's decoding reaches MAX_FRAMES (a container may not say its
    length)."""
    if count >= MAX_FRAMES:
        raise MediaError(f"more than {MAX_FRAMES} frames: cut the clip to what training needs")
