"""A sweep's trials.json names each trial's checkpoint by path. infer, export and compare read a
checkpoint only from inside its sweep: a path that leads elsewhere (a hand-edited or damaged
trials.json) is one line naming it and is never followed; a sweep moved to another folder still
finds its own checkpoints. Real files: trial.json as the recipe writes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.cli import main as cli_main
from orchestrator.infer.model import InferenceError
from orchestrator.infer.target import from_sweep


def make_sweep(root: Path, checkpoint: Path) -> Path:
    """A sweep directory whose one trial's recorded checkpoint is `checkpoint`."""
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"tracking_uri": None, "expected_trials": 1}))
    (root / "spec.yaml").write_text("metric: val/loss\nmode: min\n")
    row = {"trial_id": "abc_00000", "sla": {"topk": 0.5}, "status": "TERMINATED", "step": 2,
           "metrics": {"val/loss": 1.0}, "checkpoint": str(checkpoint)}  # fmt: skip
    (root / "trials.json").write_text(json.dumps([row]))
    return root


def write_checkpoint(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "trial.json").write_text(json.dumps({"step": 2, "sla": None, "metrics": {}}))
    return directory


def test_a_checkpoint_outside_the_sweep_is_refused_not_followed(tmp_path, capsys):
    outside = write_checkpoint(tmp_path / "elsewhere" / "checkpoint_000002")
    sweep = make_sweep(tmp_path / "sweep-1", outside)
    with pytest.raises(InferenceError, match="is not inside the sweep directory") as caught:
        from_sweep(sweep, "abc_00000")
    assert str(outside) in str(caught.value)
    assert cli_main(["infer", str(sweep), "--trial", "abc_00000", "--no-mlflow",
                     "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not inside the sweep directory" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_moved_sweep_finds_its_own_checkpoints(tmp_path):
    old = tmp_path / "a" / "sweep-2"
    checkpoint = old / "train" / "abc_00000" / "checkpoint_000002"
    make_sweep(old, checkpoint)
    write_checkpoint(checkpoint)
    new = tmp_path / "b" / "sweep-2"
    new.parent.mkdir()
    shutil.move(old, new)
    target = from_sweep(new, "abc_00000")
    assert target.directory == (new / "train" / "abc_00000" / "checkpoint_000002").resolve()
