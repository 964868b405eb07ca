"""benchmarks.train_step on the CPU with the tiny preset: a training step and, --inference, one
denoising forward pass, dense against SLA, with attention's measured share and FLOPs ratio."""

from __future__ import annotations

import json

import pytest

from benchmarks.train_step import main


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["training", "inference"])
def test_bench_step_times_dense_and_sla(mode, tmp_path, capsys):
    out = tmp_path / "step.json"
    argv = ["--preset", "tiny", "--steps", "1", "--topk", "0.25", "--out", str(out)]
    assert main(argv + (["--inference"] if mode == "inference" else [])) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == mode and result["compile"] is False
    dense, sla = result["rows"]
    assert dense["sla"] is None and dense["sla_calls"] == 0 and dense["speedup_vs_dense"] == 1.0
    assert sla["sla"]["topk"] == 0.25 and sla["sla_calls"] > 0  # SLA computed the self-attention
    assert 0 < sla["attention_flops_ratio"] < 1 == dense["attention_flops_ratio"]
    for row in result["rows"]:
        assert row["step_s"] > 0 and 0 < row["attention_share"]
    label = "forward" if mode == "inference" else "step"
    assert f"dense: {label}" in capsys.readouterr().out


def test_bench_step_refuses_a_bad_sla_setting(capsys):
    assert main(["--preset", "tiny", "--sla", "{'topk': 2}"]) == 2
    err = capsys.readouterr().err
    assert "topk" in err and "\n" == err[-1] and err.count("\n") == 1
