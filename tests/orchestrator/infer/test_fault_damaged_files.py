"""Damaged model files in copies of a real smoke-sweep checkpoint (the session's smoke sweep):
an sla_attention.pt that is a symbolic link (to another file of the checkpoint, or to a file
outside it: a readable SLA file that would load), a model.safetensors of random bytes. `infer`
and `export` refuse each in one line naming the file (exit 2), resuming from one (what a
restarted Ray Train worker runs) is refused before any training; a link is never followed. `export` to a path that is a symbolic
link is refused, and nothing is written where it points.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
from sla_kernel_glue import SLAConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(smoke_sweep) -> Path:
    """The last checkpoint of the smoke sweep's best SLA trial."""
    _, outcome = smoke_sweep
    return Path(outcome.best.checkpoint)


def damage(kind: str, broken: Path, outside: Path) -> Path:
    """Damage the copy `broken`; returns the file that the one line must name."""
    weights = broken / "sla_attention.pt"
    if kind == "link_inside":
        weights.unlink()
        weights.symlink_to("model.safetensors")
        return weights
    if kind == "link_outside":
        weights.unlink()
        weights.symlink_to(outside)
        return weights
    model = broken / "model.safetensors"
    model.write_bytes(os.urandom(model.stat().st_size))  # kind == "random_bytes"
    return model


KINDS = ("link_inside", "link_outside", "random_bytes")


@pytest.mark.parametrize("command", ["infer", "export"])
@pytest.mark.parametrize("kind", KINDS)
def test_infer_and_export_refuse_in_one_line_naming_the_file(
    kind, command, checkpoint, tmp_path, monkeypatch, capsys
):
    broken = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, broken)
    outside = tmp_path / "elsewhere.pt"
    shutil.copy(checkpoint / "sla_attention.pt", outside)  # a readable SLA file, not its own
    named = damage(kind, broken, outside)
    out = tmp_path / "out"
    if command == "infer":
        argv = ["infer", str(broken), "--out", str(out), "--device", "cpu", "--no-mlflow"]
    else:
        argv = ["export", str(broken), str(out)]
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(named) in err, err
    assert ("symbolic link" in err) if kind.startswith("link") else ("safetensors" in err)
    assert not out.exists(), "nothing written"


@pytest.mark.parametrize("kind", KINDS)
def test_resume_refuses_before_training(kind, checkpoint, tmp_path):
    broken = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, broken)
    saved = json.loads((broken / "trial.json").read_text())
    named = damage(kind, broken, checkpoint / "sla_attention.pt")
    train = TrainConfig.from_dict({**saved["train"], "steps": saved["step"] + 2})
    recorder = RecordingCallback()
    with pytest.raises(ValueError, match="symbolic link|not a readable safetensors") as info:
        run_trial(train, SLAConfig.from_dict(saved["sla"]), tmp_path / "work",
                  resume_from=broken, callback=recorder)  # fmt: skip
    assert str(named) in str(info.value) and len(str(info.value).splitlines()) == 1
    assert recorder.metrics == [], "refused before any training or report"


def test_export_to_a_symlink_is_refused(checkpoint, tmp_path, monkeypatch, capsys):
    target = tmp_path / "somewhere_else"
    target.mkdir()
    link = tmp_path / "out"
    link.symlink_to(target)
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(checkpoint), str(link)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a symbolic link" in err and str(link) in err, err
    assert list(target.iterdir()) == [], "nothing written through the link"
    assert link.is_symlink()
