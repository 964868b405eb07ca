"""What one file of a clip folder may make the tool do, bounded before the work: a huge caption is
read only as far as it can matter and cut with a note; captions with control characters are
refused; a video's or image's declared size and a video's length are checked before decoding;
symbolic links are followed and noted when they leave the folder, refused when they lead to no
file. Every file is real and written by the test."""

from __future__ import annotations

import os

import pytest

from orchestrator.data import media_bounds
from orchestrator.data.video_writers import write_captions
from orchestrator.data.videos import MAX_CAPTION_CHARS, MAX_SIDE, VideoDataError, scan_folder
from tests.media import write_test_clip, write_test_image


def one_problem(root, **kwargs) -> str:
    with pytest.raises(VideoDataError) as caught:
        scan_folder(root, frames=2, **kwargs)
    assert len(caught.value.problems) == 1, caught.value.problems
    return caught.value.problems[0]


def test_a_huge_caption_is_read_in_part_and_cut_with_a_note(tmp_path):
    write_test_clip(tmp_path / "a.mp4", frames=4)
    write_test_clip(tmp_path / "b.mp4", frames=4, seed=1)
    word = "é" * 3 + " "  # two-byte characters: the byte limit cuts one in half
    (tmp_path / "a.txt").write_text(word * 5_000_000, encoding="utf-8")  # 35 MB
    write_captions(tmp_path, {"b.mp4": "x" * (MAX_CAPTION_CHARS + 10)}, sidecar=[])
    entries, notes = scan_folder(tmp_path, frames=2)
    assert [len(e.caption) for e in entries] == [MAX_CAPTION_CHARS, MAX_CAPTION_CHARS]
    assert entries[0].caption == (word * MAX_CAPTION_CHARS)[:MAX_CAPTION_CHARS]
    assert len(notes) == 2 and all(f"to {MAX_CAPTION_CHARS} characters" in n for n in notes)
    assert "cut from 10010" not in notes[0]  # a's length is what was read, not the 35 MB
    assert f"cut from {MAX_CAPTION_CHARS + 10} to" in notes[1]


def test_a_cut_sidecar_still_refuses_invalid_bytes(tmp_path):
    write_test_clip(tmp_path / "a.mp4", frames=4)
    (tmp_path / "a.txt").write_bytes(b"ok \xff" + b"y" * (5 * MAX_CAPTION_CHARS))
    assert "not UTF-8 text (byte 0xff at byte offset 3)" in one_problem(tmp_path)


@pytest.mark.parametrize(
    ("text", "code", "at"),
    [("red\x1b[31m car", "001B", 4), ("a\x00b", "0000", 2), ("abc\u202edef", "202E", 4)],
)
def test_captions_with_control_characters_are_refused(tmp_path, text, code, at):
    write_test_clip(tmp_path / "a.mp4", frames=4)
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    line = one_problem(tmp_path)
    assert line.startswith(f"{tmp_path / 'a.txt'}: caption holds the control character U+{code}")
    assert f"at character {at}:" in line and "\x1b" not in line and "\x00" not in line


def test_tabs_and_newlines_in_a_caption_are_kept(tmp_path):
    write_test_clip(tmp_path / "a.mp4", frames=4)
    (tmp_path / "a.txt").write_text("a red car\n\tin the rain", encoding="utf-8")
    entries, _ = scan_folder(tmp_path, frames=2)
    assert entries[0].caption == "a red car\n\tin the rain"


def test_a_frame_larger_than_the_bound_is_refused_before_decoding(tmp_path):
    write_test_clip(tmp_path / "wide.mp4", frames=2, size=(16, MAX_SIDE + 16))
    (tmp_path / "wide.txt").write_text("a very wide clip", encoding="utf-8")
    line = one_problem(tmp_path, fps=None)
    assert f"{MAX_SIDE + 16}x16 pixels a frame is more than sla-sweep decodes" in line
    image = tmp_path / "img"
    image.mkdir()
    write_test_image(image / "tall.png", size=(MAX_SIDE + 2, 2))
    (image / "tall.txt").write_text("a very tall image", encoding="utf-8")
    with pytest.raises(VideoDataError, match=f"2x{MAX_SIDE + 2} pixels a frame"):
        scan_folder(image, frames=1)


def test_video_length_is_bounded(tmp_path, monkeypatch):
    write_test_clip(tmp_path / "a.mp4", frames=9, fps=8)  # 1.125 s
    (tmp_path / "a.txt").write_text("a clip", encoding="utf-8")
    monkeypatch.setattr(media_bounds, "MAX_SECONDS", 1.0)
    assert "hours long; at most" in one_problem(tmp_path, fps=8)
    monkeypatch.setattr(media_bounds, "MAX_SECONDS", 3600.0)
    monkeypatch.setattr(media_bounds, "MAX_FRAMES", 5)  # a container may not say its length
    assert "more than 5 frames: cut the clip" in one_problem(tmp_path, fps=8)


def test_symbolic_links_out_of_the_folder_are_followed_and_noted(tmp_path):
    elsewhere, root = tmp_path / "elsewhere", tmp_path / "clips"
    elsewhere.mkdir()
    root.mkdir()
    write_test_clip(elsewhere / "real.mp4", frames=4)
    os.symlink(elsewhere / "real.mp4", root / "linked.mp4")
    (root / "linked.txt").write_text("a linked clip", encoding="utf-8")
    entries, notes = scan_folder(root, frames=2)
    assert [e.path.name for e in entries] == ["linked.mp4"]
    assert notes == [
        f"{root / 'linked.mp4'}: a symbolic link out of the folder, to {elsewhere / 'real.mp4'}: "
        "followed"
    ]


@pytest.mark.parametrize("target", ["/dev/zero", "missing.mp4"])
def test_a_link_to_no_file_is_a_problem_not_ignored(tmp_path, target):
    write_test_clip(tmp_path / "a.mp4", frames=4)
    (tmp_path / "a.txt").write_text("a clip", encoding="utf-8")
    os.symlink(target if target.startswith("/") else tmp_path / target, tmp_path / "b.mp4")
    line = one_problem(tmp_path)
    assert line.startswith(f"{tmp_path / 'b.mp4'}: a symbolic link to ")
