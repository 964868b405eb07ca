"""A bad clip folder given to `sla-sweep run` with a good pipeline: every bad clip listed at once,
each line naming its file, exit status 2, before Ray starts, and nothing written: no sweep
directory, no MLflow store, no cache entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from tests.media import truncate_file, write_caption_folder, write_test_clip


@pytest.fixture(autouse=True)
def _stops_before_ray(no_cluster):
    """Every case here must fail before the sweep joins or starts Ray."""


def _run(tmp: Path, pipeline: Path, clips: Path, capsys, **data) -> tuple[int, list[str]]:
    cache = tmp / "cache"
    doc = {
        "name": "bad",
        "model": {"path": str(pipeline)},
        "data": {"source": str(clips), "frames": 9, "size": 32, "num_val": 1, "cache_dir": str(cache), **data},
        "train": {"steps": 1, "batch_size": 1},
        "sla": {"topk": {"grid": [0.5]}, "blkq": 16, "blkk": 16},
    }  # fmt: skip
    cwd = tmp / "cwd"
    cwd.mkdir()
    (tmp / "bad.yaml").write_text(yaml.safe_dump(doc))
    capsys.readouterr()
    status = main(
        ["run", str(tmp / "bad.yaml"), "--set", f"storage.results_dir={cwd / 'sla_runs'}"]
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert list(cwd.iterdir()) == [], "nothing written where the sweep would go"
    entries = [p for p in cache.rglob("*.safetensors")] if cache.exists() else []
    assert entries == [], "no cache entry written"
    return status, lines


@pytest.fixture
def clips(tmp_path) -> Path:
    root = tmp_path / "clips"
    write_caption_folder(root, n=4, frames=9, size=(32, 32))
    return root


def test_every_bad_clip_is_listed_at_once(tiny_pipeline_dir, clips, tmp_path, capsys):
    truncate_file(clips / "clip_000.mp4", 0.3)  # a copy that stopped
    (clips / "clip_002.txt").write_bytes(b"caf\xe9 au lait")  # Latin-1, not UTF-8
    write_test_clip(clips / "short.mp4", frames=5, size=(32, 32))  # 5 frames, 9 needed
    (clips / "short.txt").write_text("a short clip")
    write_test_clip(clips / "uncaptioned.mp4", frames=9, size=(32, 32))
    status, lines = _run(tmp_path, tiny_pipeline_dir, clips, capsys)
    assert status == 2
    text = "\n".join(lines)
    for name, what in (("clip_000.mp4", "decoded"), ("clip_002.txt", "UTF-8"),
                       ("short.mp4", "9"), ("uncaptioned.mp4", "caption")):  # fmt: skip
        hit = [ln for ln in lines if name in ln]
        assert hit and what in hit[0], (name, text)
