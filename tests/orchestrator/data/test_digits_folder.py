"""The moving-digits video folder: a real captioned folder that videos.py reads back."""

import json

import pytest

from orchestrator.data import digits_folder
from orchestrator.data.digits_clips import DigitsClips
from orchestrator.data.digits_folder import digit_caption, write_digits_folder
from orchestrator.data.videos import decode_clip, scan_folder

ARGS = {"num_clips": 5, "frames": 9, "size": 16, "fps": 8.0, "seed": 3}
MP4_REWRITE_TOLERANCE = 2 / 255  # mean |difference| in [-1, 1] units: about one 8-bit level


def _decoded_gap(x, y) -> float:
    """Mean absolute difference of what two of the clips decode to, in [-1, 1] units."""
    decode = lambda path: decode_clip(path, frames=9, fps=8, size=(16, 16))  # noqa: E731
    return (decode(x) - decode(y)).abs().mean().item()


def test_digits_folder_reads_back(tmp_path):
    root = write_digits_folder(tmp_path / "digits", **ARGS)
    names = [f"digit_{i:04d}.mp4" for i in range(5)]
    assert sorted(p.name for p in root.glob("*.mp4")) == names
    assert sorted(p.name for p in root.glob("*.txt")) == [
        "digit_0000.txt",
        "digit_0002.txt",
        "digit_0004.txt",
    ]
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert [row["file_name"] for row in rows] == ["digit_0001.mp4", "digit_0003.mp4"]

    entries, notes = scan_folder(root, frames=9, fps=8)
    clips = DigitsClips(num_clips=5, frames=9, size=16, channels=1, seed=3)
    assert notes == [] and [e.path.name for e in entries] == names
    for entry, (clip, label) in zip(entries, clips, strict=True):
        assert entry.caption == digit_caption(label) and entry.frames_available == 9
        video = decode_clip(entry, frames=9, fps=8, size=(16, 16))  # (3, F, H, W)
        assert video.shape == (3, 9, 16, 16)
        error = (video - clip).abs().mean().item()  # grey: every channel close to the digit
        assert error < 0.05, (entry.path.name, error)
    assert digit_caption(7) == "a handwritten digit seven moving across a dark background"


def test_digits_folder_is_deterministic_and_atomic(tmp_path, monkeypatch):
    a = write_digits_folder(tmp_path / "a", **ARGS)
    b = write_digits_folder(tmp_path / "b", **ARGS)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    captions = [name for name in files if not name.endswith(".mp4")]
    assert captions and all((a / n).read_bytes() == (b / n).read_bytes() for n in captions)
    # The clips: x264 on frames this small occasionally codes one frame differently (about 1 in
    # 750 writes in one process, seen in CI), so the bytes may differ; what they decode to may
    # differ by at most a few 8-bit levels (MP4_REWRITE_TOLERANCE), far below what a seed changes.
    clips = [name for name in files if name.endswith(".mp4")]
    for name in clips:
        assert _decoded_gap(a / name, b / name) <= MP4_REWRITE_TOLERANCE, name
    c = write_digits_folder(tmp_path / "c", **{**ARGS, "seed": 4})
    assert _decoded_gap(c / "digit_0000.mp4", a / "digit_0000.mp4") > 10 * MP4_REWRITE_TOLERANCE
    with pytest.raises(FileExistsError, match="already exists"):
        write_digits_folder(a, **ARGS)

    calls = []

    def fail_third(path, video, *, fps):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # an interrupted write
        return real(path, video, fps=fps)

    real = digits_folder.write_video
    monkeypatch.setattr(digits_folder, "write_video", fail_third)
    with pytest.raises(KeyboardInterrupt):
        write_digits_folder(tmp_path / "d", **ARGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no half folder


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"fps \(0\) must be a positive number"):
        write_digits_folder(tmp_path / "x", num_clips=1, frames=1, size=8, fps=0)
    with pytest.raises(ValueError, match=r"size \(9\) must be even"):
        write_digits_folder(tmp_path / "x", num_clips=1, frames=1, size=9)
    assert not (tmp_path / "x").exists()
