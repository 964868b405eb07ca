"""Repeats grouped per config, their spreads, and the verdict on crafted metric sets."""

from __future__ import annotations

import pytest

from orchestrator.report.findings import group_rows, judge, spread_of
from orchestrator.spec.schema import VerdictSpec
from orchestrator.storage.records import TrialRow


def rows(losses: dict, flops: dict | None = None, step_s: dict | None = None) -> list[TrialRow]:
    """One finished trial per (config, repeat): losses {topk or None: [val/loss per seed]}."""
    out = []
    for topk, values in losses.items():
        for seed, loss in enumerate(values):
            ratio = 1.0 if topk is None else (flops or {}).get(topk, topk)
            metrics = {"val/loss": loss, "flops/attention_ratio": ratio,
                       "perf/step_s": (step_s or {}).get(topk, 1.0)}  # fmt: skip
            sla = None if topk is None else {"topk": topk, "blkq": 16}
            out.append(TrialRow(f"t{len(out)}", sla, "TERMINATED", 10, metrics,
                                train={"seed": seed, "base_seed": 0}))  # fmt: skip
    return out


def test_repeats_group_per_config_with_mean_std_and_interval():
    groups = group_rows(rows({0.1: [1.0, 1.2, 1.1], None: [0.9, 0.95, 1.0]}))
    assert [(g.label, g.control, len(g.rows)) for g in groups] == [
        ("topk=0.1", False, 3), ("control", True, 3)]  # fmt: skip
    s = groups[0].spread("val/loss")
    assert s.n == 3 and s.mean == pytest.approx(1.1) and s.std == pytest.approx(0.1)
    # t(0.975, 2) = 4.303: the 95 % interval of the mean is 1.1 +- 4.303 * 0.1 / sqrt(3)
    assert (s.low, s.high) == pytest.approx((1.1 - 0.24843, 1.1 + 0.24843), abs=1e-4)
    assert spread_of([2.0]).std is None and spread_of([]) is None


def test_inside_noise_the_sparsest_config_holds():
    # topk 0.05 and 0.1 overlap the control; 0.05 is sparser, so it is the answer
    found = judge(group_rows(rows({0.05: [1.02, 0.97], 0.1: [1.0, 0.99], None: [0.98, 1.01]},
                                  step_s={0.05: 0.5, None: 1.0})), VerdictSpec())  # fmt: skip
    assert found.best == "topk=0.05" and found.has_error_bars
    assert "95% fewer attention FLOPs" in found.text and "2.00x the control's speed" in found.text
    assert "Welch" in found.text
    assert all(c.p_worse is not None and c.p_worse > 0.05 for c in found.comparisons)


def test_outside_noise_a_sparse_config_is_refused():
    # topk 0.05 is clearly worse (tight repeats, far from the control); 0.2 holds
    found = judge(group_rows(rows({0.05: [1.50, 1.51], 0.2: [1.0, 1.02], None: [1.0, 1.01]})),
                  VerdictSpec())  # fmt: skip
    refused = next(c for c in found.comparisons if c.label.startswith("topk=0.05"))
    assert not refused.holds and refused.p_worse < 0.05
    assert found.best == "topk=0.2"


def test_no_sla_config_holds():
    found = judge(group_rows(rows({0.05: [1.5, 1.51], 0.1: [1.3, 1.31], None: [1.0, 1.01]})),
                  VerdictSpec())  # fmt: skip
    assert found.best is None
    assert found.text.startswith("no SLA setting held val/loss within noise of full attention")
    assert "the closest, topk=0.1, is worse by 0.3" in found.text


def test_a_tolerance_bounds_the_mean_gap_too():
    data = rows({0.05: [1.10, 1.30], None: [1.0, 1.01]})  # noisy: the test alone lets it through
    assert judge(group_rows(data), VerdictSpec()).best == "topk=0.05"
    assert judge(group_rows(data), VerdictSpec(tolerance=0.05)).best is None
    assert judge(group_rows(data), VerdictSpec(tolerance=0.5)).best == "topk=0.05"


def test_one_repeat_has_no_error_bars():
    data = rows({0.05: [1.001], 0.1: [0.999], None: [1.0]})
    found = judge(group_rows(data), VerdictSpec())
    assert not found.has_error_bars and found.best == "topk=0.1"  # 0.05 is worse
    assert "the verdict has no error bars" in found.text
    assert judge(group_rows(data), VerdictSpec(tolerance=0.01)).best == "topk=0.05"


def test_higher_is_better_metrics_and_missing_control():
    data = rows({0.05: [30.0, 30.5], None: [31.0, 31.5]})
    for row in data:
        row.metrics["val/video_psnr"] = -row.metrics.pop("val/loss") * -1
    found = judge(group_rows(data), VerdictSpec(metric="val/video_psnr", mode="max"))
    assert found.comparisons[0].worse_by == pytest.approx(1.0)  # 1 dB lower PSNR is worse
    no_control = [r for r in data if r.sla is not None]
    assert judge(group_rows(no_control), VerdictSpec()).text.startswith("no verdict: no finished")
