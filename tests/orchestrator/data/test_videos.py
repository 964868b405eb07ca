"""A folder of captioned clips: scanning, decoding, resampling, cropping, every bad input named at
once, and writing videos and frame grids. Every file is real and written by the test."""

import dataclasses
import json
import pickle

import av
import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.data.video_writers import GRID_GAP, write_frame_grid, write_video
from orchestrator.data.videos import ClipEntry, VideoDataError, decode_clip, scan_folder
from tests.media import (
    truncate_file,
    write_caption_folder,
    write_test_clip,
    write_test_image,
)


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (3, F, H, W) in [-1, 1], as decode_clip returns."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def problems_of(root, **kwargs) -> list[str]:
    with pytest.raises(VideoDataError) as caught:
        scan_folder(root, **kwargs)
    error = caught.value
    assert str(error).splitlines() == [
        f"data folder {root}: {len(error.problems)} problem(s):",
        *error.problems,
    ]
    return error.problems


def test_mixed_folder_scans_and_decodes(tmp_path):
    write_test_clip(tmp_path / "a.mp4", frames=8, size=(24, 32), fps=8)
    gif = write_test_clip(tmp_path / "b.gif", frames=8, size=(32, 32), fps=10, seed=1)
    png = write_test_image(tmp_path / "c.png", size=(32, 32), seed=2)
    write_test_image(tmp_path / "d.JPG", size=(40, 32), seed=3)
    (tmp_path / "a.txt").write_text("  clip a, from a sidecar\n", encoding="utf-8")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "b.gif", "text": "clip b, from jsonl"}) + "\n\n"
    )
    (tmp_path / "metadata.csv").write_text(
        'file_name,prompt\nc.png,"clip c, from csv"\nd.JPG,clip d\n', encoding="utf-8"
    )
    (tmp_path / "notes.md").write_text("not media, ignored")
    (tmp_path / "sub").mkdir()  # subfolders are not read
    write_test_clip(tmp_path / "sub" / "e.mp4", frames=8)

    entries, notes = scan_folder(tmp_path, frames=1, fps=8)
    assert notes == []
    assert [(e.path.name, e.caption, e.kind, e.frames_available) for e in entries] == [
        ("a.mp4", "clip a, from a sidecar", "video", 8),
        ("b.gif", "clip b, from jsonl", "video", 7),  # 0.8 s at 8 fps: 0, 1/8, ... 6/8 s
        ("c.png", "clip c, from csv", "image", 1),
        ("d.JPG", "clip d", "image", 1),
    ]
    for entry in entries:
        clip = decode_clip(entry, frames=1, fps=8, size=(16, 16))
        assert clip.shape == (3, 1, 16, 16) and clip.dtype == torch.float32
        assert -1 <= clip.min() and clip.max() <= 1
    # Lossless inputs at their own size decode exactly.
    assert torch.equal(decode_clip(entries[1], frames=8, fps=None, size=(32, 32)), as_tensor(gif))
    assert torch.equal(
        decode_clip(entries[2], frames=1, fps=None, size=(32, 32)), as_tensor(png[None])
    )

    entries, notes = scan_folder(tmp_path, frames=4, fps=8, short="skip")
    assert [e.path.name for e in entries] == ["a.mp4", "b.gif"]
    assert notes == [
        f"{tmp_path / name}: left out: an image is 1 frame, 4 needed" for name in ("c.png", "d.JPG")
    ]
    assert decode_clip(entries[0], frames=4, fps=8, size=(24, 32)).shape == (3, 4, 24, 32)


def test_fps_resampling_takes_the_frame_on_screen(tmp_path):
    path = tmp_path / "clip.mp4"
    write_test_clip(path, frames=16, fps=16, seed=4)
    every = decode_clip(path, frames=16, fps=None, size=(32, 32))
    assert torch.equal(decode_clip(path, frames=8, fps=8, size=(32, 32)), every[:, ::2])
    # Frame i at 5 fps is the one shown at i / 5 s: source frame floor(i * 16 / 5).
    assert torch.equal(decode_clip(path, frames=4, fps=5, size=(32, 32)), every[:, [0, 3, 6, 9]])
    # Upsampling repeats frames; the clip lasts until its last frame ends (16 frames = 1 s).
    assert torch.equal(
        decode_clip(path, frames=32, fps=32, size=(32, 32)), every[:, [i // 2 for i in range(32)]]
    )
    (tmp_path / "clip.txt").write_text("a clip")
    for fps, available in ((None, 16), (16, 16), (8, 8), (5, 5), (32, 32), (3, 3)):
        (entry,), _ = scan_folder(tmp_path, frames=1, fps=fps)
        assert entry.frames_available == available, fps


def test_resampling_follows_variable_frame_durations(tmp_path):
    # A GIF whose frames last 0.1, 0.3 and 0.2 s: at 10 fps frame 1 is shown three times.
    images = [Image.fromarray(np.full((8, 8, 3), 40 * (i + 1), np.uint8)) for i in range(3)]
    images[0].save(
        tmp_path / "v.gif", save_all=True, append_images=images[1:], duration=[100, 300, 200]
    )
    clip = decode_clip(tmp_path / "v.gif", frames=6, fps=10, size=(8, 8))
    levels = ((clip[0, :, 0, 0] + 1) * 127.5).round().tolist()
    assert levels == [40, 80, 80, 80, 120, 120]
    with pytest.raises(VideoDataError, match=r"v.gif: 6 frame\(s\) at 10 fps, 7 needed"):
        decode_clip(tmp_path / "v.gif", frames=7, fps=10, size=(8, 8))


def banded(height: int, width: int) -> np.ndarray:
    """Black (H, W, 3) with a red band down the middle eighth and blue bands at both sides."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2 - width // 16 : width // 2 + width // 16, 0] = 255
    image[:, : width // 8, 2] = image[:, -(width // 8) :, 2] = 255
    return image


def test_resize_covers_and_crops_the_centre(tmp_path):
    wide = banded(32, 64)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    # Already covering (32, 32): no resize, exactly the middle 32 columns.
    crop = decode_clip(tmp_path / "wide.png", frames=1, fps=None, size=(32, 32))
    assert torch.equal(crop, as_tensor(wide[None, :, 16:48]))
    # Twice as large: halved to (32, 64) then cropped; red stays centred, the blue sides go.
    Image.fromarray(banded(64, 128)).save(tmp_path / "large.png")
    crop = decode_clip(tmp_path / "large.png", frames=1, fps=None, size=(32, 32))
    red = crop[0, 0, 0]  # (W,) the top row of the red channel
    assert torch.allclose(red, red.flip(0), atol=1e-5) and red[16] > 0.9 and red[0] < -0.9
    assert crop[2].max() < -0.9  # no blue left
    # A tall video (bands across rows), upscaled 1.5x to (96, 48): the middle 48 rows are kept.
    tall = banded(32, 64).transpose(1, 0, 2)  # (64, 32, 3)
    write_video(tmp_path / "tall.mp4", np.stack([tall, tall]), fps=8)
    clip = decode_clip(tmp_path / "tall.mp4", frames=2, fps=None, size=(48, 48))
    assert clip.shape == (3, 2, 48, 48)
    red = clip[0, 0, :, 24]  # (H,) the middle column: the red band is in the middle rows
    assert red[23] > 0.8 and red[0] < -0.8 and red[-1] < -0.8
    assert torch.allclose(red, red.flip(0), atol=0.15)
    assert clip[2].max() < -0.8  # the blue bands at top and bottom are cropped away


def test_decoding_and_scanning_are_deterministic(tmp_path):
    write_caption_folder(tmp_path, n=2, frames=9, size=(30, 40))
    first, _ = scan_folder(tmp_path, frames=5, fps=6)
    again, _ = scan_folder(tmp_path, frames=5, fps=6)
    assert first == again
    a = decode_clip(first[1], frames=5, fps=6, size=(24, 24))
    b = decode_clip(first[1].path, frames=5, fps=6, size=(24, 24))
    assert torch.equal(a, b)


# ---- bad inputs: each problem names its file, and all are reported at once -----------------


@dataclasses.dataclass(frozen=True)
class Media:
    """A media file to write: moving shapes (an image for .png), optionally cut short."""

    frames: int = 8
    fps: int = 8
    cut: float | None = None  # keep only this fraction of the bytes


def write_files(root, files: dict, prefix: str = "") -> None:
    for name, content in files.items():
        path = root / f"{prefix}{name}"
        if isinstance(content, Media) and path.suffix == ".png":
            write_test_image(path)
        elif isinstance(content, Media):
            write_test_clip(path, frames=content.frames, fps=content.fps)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        if isinstance(content, Media) and content.cut is not None:
            truncate_file(path, content.cut)


GOOD = {"good.mp4": Media(), "good.txt": "a good clip"}
JSONL_ROW = '{"file_name": "bad.mp4", "caption": "a caption"}\n'
# case: (files beside GOOD, the file the problem line starts with, what it says (one of))
BAD_INPUTS = {
    "truncated_mp4": (
        {"bad.mp4": Media(16, fps=16, cut=0.5), "bad.txt": "cut short"},
        "bad.mp4",
        ("cannot be decoded", "truncated?"),  # which, depends on where the cut falls
    ),
    "not_utf8_caption": (
        {"bad.mp4": Media(), "bad.txt": "café".encode("latin-1")},
        "bad.txt",
        ("not UTF-8 text (byte 0xe9 at byte offset 3)",),
    ),
    "missing_caption": ({"bad.mp4": Media()}, "bad.mp4", ("no caption: add ",)),
    "too_short": (
        {"bad.mp4": Media(5), "bad.txt": "too short"},
        "bad.mp4",
        ("5 frame(s) at 8 fps of 5 decoded, 8 needed",),
    ),
    "metadata_names_missing_file": (
        {"metadata.jsonl": JSONL_ROW.replace("bad.mp4", "gone.mp4")},
        "metadata.jsonl line 1",
        ("file_name 'gone.mp4' does not exist",),
    ),
    "malformed_jsonl": (
        {"bad.mp4": Media(), "metadata.jsonl": JSONL_ROW + "{oops\n"},
        "metadata.jsonl line 2",
        ("not valid JSON",),
    ),
    "captioned_twice": (
        {"bad.mp4": Media(), "bad.txt": "one caption", "metadata.jsonl": JSONL_ROW},
        "bad.mp4",
        ("captioned 2 times, by bad.txt and metadata.jsonl line 1",),
    ),
    "empty_caption": ({"bad.mp4": Media(), "bad.txt": " \n"}, "bad.txt", ("empty caption",)),
    "csv_row_with_extra_field": (
        {"bad.mp4": Media(), "metadata.csv": "file_name,caption\nbad.mp4,a clip,extra\n"},
        "metadata.csv line 2",
        ("3 fields, the header has 2",),
    ),
    "csv_without_caption_column": (
        {"metadata.csv": "file_name,description\ngood.mp4,a clip\n"},
        "metadata.csv",
        ("must name the columns file_name and one of caption",),
    ),
    "not_a_video": (
        {"bad.webm": np.random.default_rng(0).bytes(2000), "bad.txt": "noise"},
        "bad.webm",
        ("cannot be decoded",),
    ),
    "broken_image": (
        {"bad.png": Media(cut=0.6), "bad.txt": "half a picture"},
        "bad.png",
        ("not a readable image",),
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_named(tmp_path, case):
    files, named, expected = BAD_INPUTS[case]
    write_files(tmp_path, {**GOOD, **files})
    (line,) = problems_of(tmp_path, frames=8, fps=8)
    assert line.startswith(f"{tmp_path / named}: ") and any(t in line for t in expected), line


def test_every_problem_is_reported_at_once(tmp_path):
    write_files(tmp_path, GOOD)
    bad = {}
    for case in (
        "truncated_mp4",
        "not_utf8_caption",
        "missing_caption",
        "too_short",
        "broken_image",
    ):
        files, named, expected = BAD_INPUTS[case]
        write_files(tmp_path, files, prefix=f"{case}_")
        bad[f"{tmp_path / case}_{named}"] = expected
    (tmp_path / "metadata.jsonl").write_text(JSONL_ROW.replace("bad", "gone") + "{oops\n")
    bad[f"{tmp_path / 'metadata.jsonl'} line 1"] = ("'gone.mp4' does not exist",)
    bad[f"{tmp_path / 'metadata.jsonl'} line 2"] = ("not valid JSON",)
    problems = problems_of(tmp_path, frames=8, fps=8)
    assert len(problems) == len(bad) == 7, problems
    for prefix, expected in bad.items():
        (line,) = [p for p in problems if p.startswith(prefix + ": ")]
        assert any(text in line for text in expected), line


def test_short_clips_error_or_skip(tmp_path):
    write_files(tmp_path, {**GOOD, **BAD_INPUTS["too_short"][0]})
    path = tmp_path / "bad.mp4"
    assert problems_of(tmp_path, frames=8, fps=8)[0].endswith("or short='skip' to leave it out")
    entries, notes = scan_folder(tmp_path, frames=8, fps=8, short="skip")
    assert [e.path.name for e in entries] == ["good.mp4"]
    assert notes == [f"{path}: left out: 5 frame(s) at 8 fps of 5 decoded, 8 needed"]
    problems = problems_of(tmp_path, frames=9, fps=8, short="skip")
    assert problems == [f"{tmp_path}: no clip is long enough: all 2 were skipped"]
    with pytest.raises(ValueError, match=r"short \('drop'\) must be one of error, skip"):
        scan_folder(tmp_path, frames=8, short="drop")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no clips here")
    assert problems_of(tmp_path, frames=1) == [
        f"{tmp_path}: holds no media files (allowed: videos .mp4 .webm .mov .gif, images .png "
        ".jpg .jpeg .webp)"
    ]
    assert problems_of(tmp_path / "nope", frames=1) == [f"{tmp_path / 'nope'}: does not exist"]


def test_error_pickles_and_bad_arguments_fail_early(tmp_path):
    error = VideoDataError(tmp_path, ["a: one", "b: two\nlines"])
    assert error.problems == ["a: one", "b: two lines"]  # one line per problem
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems and str(copy) == str(error)
    with pytest.raises(ValueError, match=r"frames \(0\) must be a positive integer; fps"):
        scan_folder(tmp_path, frames=0, fps=-1)
    with pytest.raises(ValueError, match=r"size \(\(32,\)\) must be \(height, width\)"):
        decode_clip(ClipEntry(tmp_path / "x.mp4", "x", "video", 1), frames=1, fps=None, size=(32,))


# ---- writing --------------------------------------------------------------------------------


def smooth_clip(frames: int, height: int, width: int) -> torch.Tensor:
    """float (3, F, H, W) in [-1, 1]: slowly moving colour gradients."""
    f, y, x = torch.meshgrid(
        torch.arange(frames).float(),
        torch.linspace(0, 1, height),
        torch.linspace(0, 1, width),
        indexing="ij",
    )
    phase = 0.2 * f
    return torch.stack([torch.sin(3 * x + phase), torch.cos(2 * y - phase), x * y * 2 - 1]) * 0.9


def test_write_video_round_trip(tmp_path):
    clip = smooth_clip(6, 32, 48)
    path = write_video(tmp_path / "out" / "v.mp4", clip, fps=12)
    assert path == tmp_path / "out" / "v.mp4"
    assert [p.name for p in path.parent.iterdir()] == ["v.mp4"]  # the temporary file is gone
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.format.name) == ("h264", "yuv420p")
        assert stream.average_rate == 12
    back = decode_clip(path, frames=6, fps=None, size=(32, 48))
    assert back.shape == clip.shape
    error = (back - clip).abs().mean().item()
    assert error < 0.05, error  # lossy H.264 (crf 18, yuv420p) on smooth content
    # uint8 frames of odd size: padded by repeating the last row and column.
    frames = ((smooth_clip(3, 15, 21) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
    write_video(tmp_path / "odd.mp4", frames, fps=8)
    back = decode_clip(tmp_path / "odd.mp4", frames=3, fps=None, size=(16, 22))
    assert (back[:, :, :15, :21] - as_tensor(frames)).abs().mean() < 0.05
    assert (back[:, :, 15] - back[:, :, 14]).abs().mean() < 0.05
    with pytest.raises(ValueError, match=r"must be \(3, F, H, W\) RGB"):
        write_video(tmp_path / "x.mp4", torch.zeros(1, 2, 8, 8), fps=8)


def test_write_video_is_atomic_and_reproducible(tmp_path, monkeypatch):
    clip = smooth_clip(4, 16, 16)
    first = write_video(tmp_path / "a.mp4", clip, fps=8).read_bytes()
    write_video(tmp_path / "b.mp4", clip, fps=8)
    # Reproducible in what it decodes to (x264 at one thread rarely codes a tiny frame
    # differently, about 1 write in 750, so the bytes are not compared).
    decoded = [decode_clip(tmp_path / f"{n}.mp4", frames=4, fps=None, size=(16, 16)) for n in "ab"]
    assert (decoded[0] - decoded[1]).abs().mean() <= 2 / 255

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_video(tmp_path / "a.mp4", smooth_clip(4, 16, 16) * 0, fps=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]  # no tmp file left
    assert (tmp_path / "a.mp4").read_bytes() == first  # the old file is untouched


def test_write_frame_grid(tmp_path):
    frames = (np.arange(12, dtype=np.uint8)[:, None, None, None] * 20).repeat(3, -1)
    frames = np.broadcast_to(frames, (12, 10, 6, 3)).copy()  # frame i is grey 20 * i
    path = write_frame_grid(tmp_path / "grid.png", frames)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (10, 8 * 6 + 7 * GRID_GAP, 3)
    tiles = [grid[0, i * (6 + GRID_GAP), 0] for i in range(8)]
    assert tiles == [20 * round(i * 11 / 7) for i in range(8)]  # evenly spaced, first and last
    assert (grid[:, 6 : 6 + GRID_GAP] == 255).all()
    path = write_frame_grid(tmp_path / "few.png", as_tensor(frames[:3]), max_frames=8)
    assert Image.open(path).size == (3 * 6 + 2 * GRID_GAP, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.png", "grid.png"]
