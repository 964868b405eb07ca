"""Damaged checkpoint directories (copies of a real smoke-sweep checkpoint): sla_attention.pt
missing, truncated, from a different SLA config, or holding a pickled object. `sla-sweep infer`
refuses each in one line (exit 2); resuming from one (what a restarted Ray Train worker does)
refuses the damaged file before any training; nothing is written or overwritten either way.
A missing file on resume is design.md's "SLA layers start fresh, told in one line".
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main as cli_main
from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
from orchestrator.recipe.checkpoint import read_trial

pytestmark = pytest.mark.slow

MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "sla_sweep_pickle_ran"


class Payload:
    """Unpickling this would run code (create MARKER): weights_only loading must refuse it."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def damage(kind: str, checkpoint: Path, other: Path) -> None:
    weights = checkpoint / "sla_attention.pt"
    if kind == "missing":
        weights.unlink()
    elif kind == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif kind == "other_config":  # another trial's file: its settings (topk) differ
        shutil.copy(other / "sla_attention.pt", weights)
    elif kind == "pickled_object":
        torch.save({"format": "sla_attention", "version": 2, "payload": Payload()}, weights)


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def checkpoints(smoke_sweep):
    """The last checkpoint of each SLA trial of the session's smoke sweep."""
    _, outcome = smoke_sweep
    sla_rows = sorted((r for r in outcome.rows if r.sla is not None), key=lambda r: r.sla["topk"])
    assert len(sla_rows) == 2 and sla_rows[0].sla["topk"] != sla_rows[1].sla["topk"]
    return [Path(r.checkpoint) for r in sla_rows]


KINDS = ("missing", "truncated", "other_config", "pickled_object")
EXPECTED = {
    "missing": "no sla_attention.pt",
    "truncated": "truncated or corrupt",
    "other_config": "SLA settings differ from the running config: topk",
    "pickled_object": "refused, it holds more than tensors and plain values",
}


@pytest.mark.parametrize("kind", KINDS)
def test_infer_refuses_in_one_line_and_writes_nothing(kind, checkpoints, tmp_path, capsys):
    broken = tmp_path / "checkpoint"
    shutil.copytree(checkpoints[0], broken)
    damage(kind, broken, checkpoints[1])
    before = digest(broken)
    MARKER.unlink(missing_ok=True)
    out = tmp_path / "samples"
    code = cli_main(["infer", str(broken), "--out", str(out), "--device", "cpu", "--no-mlflow"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert EXPECTED[kind] in err, err
    assert digest(broken) == before, "the checkpoint was modified"
    assert not out.exists(), "partial samples were written"
    assert not MARKER.exists(), "the pickled object's code ran"


@pytest.mark.parametrize("kind", KINDS)
def test_resume_from_a_damaged_checkpoint(kind, checkpoints, tmp_path, caplog):
    broken = tmp_path / "checkpoint"
    shutil.copytree(checkpoints[0], broken)
    damage(kind, broken, checkpoints[1])
    before = digest(broken)
    trial = read_trial(broken)
    # steps == the checkpoint's step: a resume that loads everything and then has nothing to train
    train = TrainConfig.from_dict({**trial["train"], "steps": trial["step"]})
    from sla_kernel_glue import SLAConfig

    sla = SLAConfig.from_dict(trial["sla"])
    workdir = tmp_path / "resumed"
    MARKER.unlink(missing_ok=True)
    caplog.set_level(logging.WARNING, logger="sla_kernel_glue.state")
    if kind == "missing":
        run_trial(train, sla, workdir, callback=RecordingCallback(), resume_from=broken)
        lines = [r.getMessage() for r in caplog.records if "sla_attention.pt" in r.getMessage()]
        assert len(lines) == 1 and "SLA layers start fresh" in lines[0], lines
    else:
        with pytest.raises(ValueError) as info:
            run_trial(train, sla, workdir, callback=RecordingCallback(), resume_from=broken)
        message = str(info.value)
        assert len(message.splitlines()) == 1 and EXPECTED[kind] in message, message
    assert digest(broken) == before, "the checkpoint was modified"
    assert not list(workdir.glob("checkpoint_*")), "a checkpoint was written"
    assert not MARKER.exists(), "the pickled object's code ran"
