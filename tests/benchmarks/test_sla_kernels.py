"""benchmarks.sla_kernels: runs as `python -m benchmarks.sla_kernels` with its flags, refuses to
run without CUDA, and on a GPU checks the kernels and times them on a small problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).parents[2]
FLAGS = ["--n", "--topk", "--blkq", "--scope", "--batch", "--heads", "--skip-check", "--out"]


def test_runs_as_a_module_from_the_repository_root():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.sla_kernels", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(flag in proc.stdout for flag in FLAGS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_without_cuda(capsys):
    from benchmarks.sla_kernels import main

    assert main(["--skip-check"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_small_run_writes_checks_and_timings(tmp_path):
    from benchmarks.sla_kernels import main

    argv = ["--n", "1024", "--topk", "0.1", "--scope", "all", "--batch", "1", "--heads", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(check["ok"] for check in results["checks"])
    impls = {row["impl"] for row in results["timings"]}
    assert impls == {"sdpa_cudnn", "sdpa_flash", "sla_all_q64"}
    assert all("error" not in stage for stage in results["stages"])
