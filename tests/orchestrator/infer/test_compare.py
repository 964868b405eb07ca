"""`sla-sweep compare` on a real smoke sweep: every trial's samples from the same noise against the
control's, the loss gap, generation time; and its refusals."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from orchestrator.cli import main
from orchestrator.infer.compare import compare_sweep
from orchestrator.storage.records import load_rows

pytestmark = pytest.mark.slow


def test_compare_reports_every_trial_against_the_control(smoke_sweep, tmp_path, capsys):
    _, outcome = smoke_sweep
    out = tmp_path / "compare.json"
    rc = main(
        [
            "compare",
            str(outcome.sweep_dir),
            "--num-samples",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    rows = {r.trial_id: r for r in load_rows(outcome.sweep_dir).values()}
    trials = result["trials"]
    assert len(trials) == len(rows) == 3
    control = trials[0]
    assert control["sla"] is None and control["psnr_vs_control_db"] is None
    assert control["speedup_vs_control"] == 1.0 and control["sla_calls"] == 0
    for t in trials[1:]:
        assert t["sla"] is not None and t["sla_calls"] > 0  # sampled with SLA on
        assert t["val_loss_gap_vs_control"] == pytest.approx(
            rows[t["trial"]].metrics["val/loss"] - rows[control["trial"]].metrics["val/loss"]
        )
        # Different attention, so different samples from the same noise: finite, below the cap.
        assert math.isfinite(t["psnr_vs_control_db"]) and 0 < t["psnr_vs_control_db"] < 100
        assert t["generate_s"] > 0
    printed = capsys.readouterr().out
    assert "control (full attention)" in printed and f"compare: {out}" in printed


def test_compare_is_deterministic(smoke_sweep):
    # Same weights, same noise: the same samples, so the same PSNR values, run after run.
    _, outcome = smoke_sweep
    result = compare_sweep(outcome.sweep_dir, num_samples=1, device="cpu")
    first = compare_sweep(outcome.sweep_dir, num_samples=1, device="cpu")
    assert [t["trial"] for t in result["trials"]] == [t["trial"] for t in first["trials"]]
    assert [t["psnr_vs_control_db"] for t in result["trials"]] == [
        t["psnr_vs_control_db"] for t in first["trials"]
    ]


def test_without_a_control_or_a_sweep_it_says_so(smoke_sweep, tmp_path, capsys):
    _, outcome = smoke_sweep
    copy = tmp_path / "no_control"
    shutil.copytree(outcome.sweep_dir, copy, ignore=shutil.ignore_patterns("checkpoint_*"))
    data = json.loads((copy / "trials.json").read_text())
    rows = data["trials"] if isinstance(data, dict) else data
    kept = [r for r in rows if r.get("sla") is not None]
    (copy / "trials.json").write_text(
        json.dumps({**data, "trials": kept} if isinstance(data, dict) else kept)
    )
    assert main(["compare", str(copy), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no finished full-attention control trial" in err[0]
    assert main(["compare", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a sweep directory (no sweep.json)" in err[0]
    assert not (copy / "compare.json").exists()


def test_table_names_trials_by_the_settings_that_vary():
    from orchestrator.infer.compare import format_comparison

    base = {"blkq": 64, "topk": 0.05}
    result = {"trials": [
        {"trial": "c", "sla": None, "val/loss": 0.40, "val_loss_gap_vs_control": 0.0, "psnr_vs_control_db": None,
         "generate_s": 4.0, "speedup_vs_control": 1.0},
        {"trial": "a", "sla": base, "val/loss": 0.41, "val_loss_gap_vs_control": 0.01, "psnr_vs_control_db": 50.0,
         "generate_s": 2.0, "speedup_vs_control": 2.0},
        {"trial": "b", "sla": {**base, "linear_scope": "none"}, "val/loss": 0.42, "val_loss_gap_vs_control": 0.02,
         "psnr_vs_control_db": 40.0, "generate_s": 1.0, "speedup_vs_control": 4.0},
    ]}  # fmt: skip
    lines = format_comparison(result).splitlines()
    assert lines[1].startswith("control (full attention)") and lines[1].split()[-1] == "1.00x"
    assert lines[2].startswith("a ")  # nothing varies for it but the absent key: its trial id
    assert (
        lines[3].startswith("linear_scope=none")
        and "+0.0200" in lines[3]
        and lines[3].endswith("4.00x")
    )


def test_compiled_compare_matches_eager(smoke_sweep):
    # --compile: every model's blocks compiled (dense control and SLA trials alike); the same
    # samples within compiler rounding, so the same PSNR against the control up to that rounding.
    from torch._dynamo.utils import counters

    _, outcome = smoke_sweep
    eager = compare_sweep(outcome.sweep_dir, num_samples=1, device="cpu")
    counters.clear()
    compiled = compare_sweep(outcome.sweep_dir, num_samples=1, device="cpu", compile=True)
    assert counters["stats"]["unique_graphs"] > 0 and compiled["compile"] is True
    assert [t["trial"] for t in compiled["trials"]] == [t["trial"] for t in eager["trials"]]
    for a, b in zip(eager["trials"][1:], compiled["trials"][1:], strict=True):
        assert b["sla_calls"] == a["sla_calls"] > 0
        assert b["psnr_vs_control_db"] == pytest.approx(a["psnr_vs_control_db"], abs=0.5)
