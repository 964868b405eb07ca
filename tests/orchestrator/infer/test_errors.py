"""`sla-sweep infer` / `export` on bad targets: one clear line on stderr and exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

from orchestrator.cli import main as cli_main
from orchestrator.infer.samples import GenerationSettings, sample_inputs

SETTINGS = GenerationSettings(channels=4, frames=3, size=8, text_len=8, text_dim=32, num_classes=10,
                              sample_steps=2, timestep_shift=1.0, mixed_precision="no")  # fmt: skip


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_path_that_is_not_a_run_id(tmp_path, capsys):
    assert cli_main(["infer", str(tmp_path / "nope")]) == 2
    err = one_error_line(capsys)
    assert "is not an existing directory, an MLflow run id (32 hex digits)" in err
    assert "nor a registered model (models:/NAME/VERSION)" in err


def test_directory_that_is_nothing_loadable(tmp_path, capsys):
    assert cli_main(["infer", str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert "sweep directory" in err and "checkpoint directory" in err and "export" in err


def test_trial_needs_a_sweep_directory(tmp_path, capsys):
    assert cli_main(["infer", str(tmp_path), "--trial", "00001"]) == 2
    assert "--trial" in one_error_line(capsys)


def test_sweep_without_trials(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text(json.dumps({"tracking_uri": "sqlite:////x/mlflow.db"}))
    assert cli_main(["infer", str(tmp_path)]) == 2
    assert "has no trials yet" in one_error_line(capsys)


def test_run_id_without_a_store(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path}/none.db"
    assert cli_main(["infer", "0" * 32, "--tracking-uri", missing]) == 2
    assert "no MLflow store" in one_error_line(capsys)


def test_incomplete_checkpoint(tmp_path, capsys):
    (tmp_path / "trial.json").write_text("{not json")
    assert cli_main(["infer", str(tmp_path)]) == 2
    assert "not a usable checkpoint directory" in one_error_line(capsys)


def test_export_into_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli_main(["export", str(tmp_path), str(tmp_path / "file")]) == 2
    assert "not an empty directory" in one_error_line(capsys)


def test_sample_inputs_are_fixed_by_the_seed():
    noise, labels = sample_inputs(SETTINGS, num_samples=12, seed=3)
    again, _ = sample_inputs(SETTINGS, num_samples=12, seed=3)
    other, _ = sample_inputs(SETTINGS, num_samples=12, seed=4)
    assert noise.shape == (12, 4, 3, 8, 8)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert noise.equal(again) and not noise.equal(other)
    with pytest.raises(ValueError, match="num_samples"):
        sample_inputs(SETTINGS, num_samples=0, seed=0)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message for a machine without CUDA"
)
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    (tmp_path / "inference.json").write_text("{}")  # an export-looking directory
    assert cli_main(["infer", str(tmp_path), "--device", "cuda"]) == 2
    assert "--device cuda but torch sees no CUDA device" in one_error_line(capsys)
