"""`sla-sweep run` on a small pipeline spec that must be refused: the spec written, the command run
in-process, and nothing written where the sweep or its cache would go (the fault tests of bad
pipelines and bad clip folders share it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.cli import main


def run_bad_spec(
    tmp: Path,
    pipeline: Path,
    clips: Path,
    capsys,
    *,
    train: dict[str, Any] | None = None,
    model: dict[str, str] | None = None,
    **data,
) -> tuple[int, list[str]]:
    """(exit status, non-empty stderr lines) of `sla-sweep run` on a 9-frame 32x32 spec of
    `pipeline` (or `model`, e.g. {"preset": "tiny"}) and `clips` (data and train entries
    overridden by `data`, `train`); asserts that no sweep directory and no cache entry were
    written."""
    cache = tmp / "cache"
    doc = {
        "name": "bad",
        "model": model or {"path": str(pipeline)},
        "data": {"source": str(clips), "frames": 9, "size": 32, "num_val": 1, "cache_dir": str(cache), **data},
        "train": {"steps": 1, "batch_size": 1, **(train or {})},
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
