"""A bad clip folder given to `sla-sweep run` with a good pipeline: every bad clip listed at once,
each line naming its file, exit status 2, before Ray starts, and nothing written: no sweep
directory, no MLflow store, no cache entry."""

from __future__ import annotations

import pytest

from tests.bad_specs import run_bad_spec
from tests.media import truncate_file, write_test_clip


@pytest.fixture(autouse=True)
def _stops_before_ray(no_cluster):
    """Every case here must fail before the sweep joins or starts Ray."""


def test_every_bad_clip_is_listed_at_once(tiny_pipeline_dir, clips, tmp_path, capsys):
    truncate_file(clips / "clip_000.mp4", 0.3)  # a copy that stopped
    (clips / "clip_002.txt").write_bytes(b"caf\xe9 au lait")  # Latin-1, not UTF-8
    write_test_clip(clips / "short.mp4", frames=5, size=(32, 32))  # 5 frames, 9 needed
    (clips / "short.txt").write_text("a short clip")
    write_test_clip(clips / "uncaptioned.mp4", frames=9, size=(32, 32))
    status, lines = run_bad_spec(tmp_path, tiny_pipeline_dir, clips, capsys)
    assert status == 2
    text = "\n".join(lines)
    for name, what in (("clip_000.mp4", "decoded"), ("clip_002.txt", "UTF-8"),
                       ("short.mp4", "9"), ("uncaptioned.mp4", "caption")):  # fmt: skip
        hit = [ln for ln in lines if name in ln]
        assert hit and what in hit[0], (name, text)
