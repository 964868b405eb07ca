"""`sla-sweep run` refuses a trial whose memory plan does not fit the GPU it asks for, in one
line with the estimate, before Ray starts or anything is written: a real `sla-sweep` process,
the GPU's memory given by resources.gpu_memory_gib since this machine has no GPU."""

from __future__ import annotations

from pathlib import Path

import psutil

from tests.orchestrator.sweep.test_fault_before_start import assert_one_line, run_sweep_cli


def test_impossible_setting_refused_before_ray(tmp_path: Path):
    work, base = tmp_path / "work", tmp_path / "base"
    work.mkdir()
    before = {p.pid for p in psutil.process_iter(["name"]) if "raylet" in (p.info["name"] or "")}
    status, err = run_sweep_cli(
        work, base, "resources.gpus_per_worker=1", "resources.gpu_memory_gib=0.0001"
    )
    assert_one_line(status, err, "needs about", "GiB per GPU", "activations", "gets 0.0 GiB")
    assert list(work.iterdir()) == [] and not base.exists()  # nothing created
    after = {p.pid for p in psutil.process_iter(["name"]) if "raylet" in (p.info["name"] or "")}
    assert after <= before  # no Ray started
