"""A checkpoint whose torch files are pickles that need more than a weights-only load: refused
in one line naming the file before anything reads it (resume and infer both go through
read_trial), and the pickle's code never runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from orchestrator.recipe.__main__ import main as recipe_main
from orchestrator.recipe.checkpoint import read_trial

RAN: list[str] = []


class _Payload:
    """Rebuilt by a full unpickle only: it records that its code ran."""

    def __reduce__(self):
        return (RAN.append, ("unpickled",))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trial")
    args = ["--preset", "tiny", "--sla", "{'topk': 0.5, 'blkq': 16, 'blkk': 16}", "--out", str(out),
            "--steps", "2", "--base-steps", "0", "--frames", "4", "--size", "16",
            "--checkpoint-every", "2", "--sample-steps", "2"]  # fmt: skip
    assert recipe_main(args) == 0
    (found,) = out.glob("checkpoint_*")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", ["optimizer.bin", "pytorch_model.bin"])
def test_a_pickled_torch_file_is_one_line(name, checkpoint, tmp_path, capsys):
    from orchestrator.cli import main

    damaged = Path(shutil.copytree(checkpoint, tmp_path / "checkpoint"))
    pickled = damaged / name
    torch.save({"state": {}, "extra": _Payload()}, pickled)
    with pytest.raises(ValueError) as caught:
        read_trial(damaged)
    message = str(caught.value)
    assert str(pickled) in message and "weights_only=True" in message and "\n" not in message
    assert "weights_only=False" not in message
    capsys.readouterr()
    status = main(["infer", str(damaged), "--out", str(tmp_path / "out")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert status == 2 and len(err) == 1 and str(pickled) in err[0], err
    assert RAN == [] and not (tmp_path / "out").exists()
