"""One Pareto front and one config label wherever a sweep shows them: the sweep's pareto.png (one
point per trial, beside results.csv and in the parent run's note), the study report's pareto.png
(one point per config), the results table, the report's tables and MLflow's config tag."""

from __future__ import annotations

import csv
import re

import pytest

from orchestrator.report import pareto
from orchestrator.report.findings import group_rows, group_tags
from orchestrator.report.study import write_report
from orchestrator.report.table import format_table, plot_pareto
from orchestrator.spec.loader import load_spec
from orchestrator.storage.records import TrialRow
from orchestrator.tracking.mlflow_log import sweep_note
from tests.paths import REPO

# (topk or None for the control, val/loss, attention FLOPs ratio); 0.2 is dominated by 0.1
CONFIGS = [(0.05, 0.90, 0.10), (0.1, 0.80, 0.20), (0.2, 0.85, 0.30), (0.5, 0.70, 0.60),
           (None, 0.60, 1.00)]  # fmt: skip
LABELS = ["topk=0.05", "topk=0.1", "topk=0.2", "topk=0.5", "control"]
FRONT = ["topk=0.05", "topk=0.1", "topk=0.5", "control"]  # by increasing FLOPs


def records(seeds=(0,), jitter=0.0) -> list[TrialRow]:
    """One finished trial per (config, seed), as a sweep's trials.json holds them."""
    out = []
    for seed in seeds:
        for topk, loss, ratio in CONFIGS:
            sla = None if topk is None else {"topk": topk, "blkq": 32}
            metrics = {"val/loss": loss + jitter * seed, "flops/attention_ratio": ratio}
            out.append(TrialRow(f"t{len(out)}", sla, "TERMINATED", 4, metrics,
                                train={"seed": seed, "base_seed": 0}))  # fmt: skip
    return out


def brute_front(points: list[tuple[str, float, float]]) -> list[str]:
    """The front by its definition (lower loss and lower FLOPs are better), written apart from
    the code under test: a point is out when another is no worse in both and better in one."""
    kept = [
        (f, name) for name, q, f in points
        if not any(q2 <= q and f2 <= f and (q2, f2) != (q, f) for _, q2, f2 in points)
    ]  # fmt: skip
    return [name for _, name in sorted(kept)]


@pytest.fixture
def fronts(monkeypatch) -> list[list[str]]:
    """The labels of every front pareto.pareto_front computes while the test runs."""
    seen: list[list[str]] = []
    one = pareto.pareto_front

    def spy(points, mode):
        front = one(points, mode)
        seen.append([p.label for p in front])
        return front

    monkeypatch.setattr(pareto, "pareto_front", spy)
    return seen


def smoke_spec(tmp_path):
    return load_spec(REPO / "experiments" / "smoke.yaml", [], cwd=tmp_path, gpus_available=0)


def test_the_sweep_plot_and_the_study_report_draw_the_same_front(tmp_path, fronts):
    """Both pareto.png files go through the one front: a writer with a front of its own would
    leave no call here, one that disagreed a different list."""
    rows = records()
    assert (
        brute_front([(label, q, f) for label, (_, q, f) in zip(LABELS, CONFIGS, strict=True)])
        == FRONT
    )

    plot_pareto(rows, tmp_path / "pareto.png", "val/loss", "min")  # the sweep's (run.py)
    assert fronts == [FRONT]
    findings = write_report(smoke_spec(tmp_path), tmp_path, rows)  # the study report's
    assert fronts == [FRONT, FRONT]
    assert tmp_path.joinpath("pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert tmp_path.joinpath("report", "pareto.png") in findings.files


def test_config_means_front_matches_the_definition_with_repeats(fronts):
    rows = records(seeds=(0, 1), jitter=0.01)  # means 0.005 above each config's loss
    points = pareto.config_points(group_rows(rows), "val/loss")
    assert [p.spread for p in points] == pytest.approx([0.00707107] * 5, rel=1e-5)
    got = [p.label for p in pareto.pareto_front(points, "min")]
    assert got == FRONT == brute_front([(p.label, p.quality, p.flops) for p in points])
    # higher is better: only the cheapest point is left undominated
    assert [p.label for p in pareto.pareto_front(points, "max")] == ["topk=0.05"]


def test_one_config_label_in_the_report_the_table_and_mlflow(tmp_path):
    rows = records(seeds=(0, 1), jitter=0.01)
    findings = write_report(smoke_spec(tmp_path), tmp_path, rows)
    assert [g.label for g in findings.groups] == LABELS
    with (tmp_path / "report" / "summary.csv").open() as fh:
        assert list(dict.fromkeys(r["config"] for r in csv.DictReader(fh))) == LABELS
    # MLflow: each child run's config tag is its config's label (one trial per config varies
    # only in topk here, so the tag, which names every setting, adds the fixed blkq)
    tags = [group_tags(r)["sla_sweep.config"] for r in rows[:5]]
    assert tags == ["topk=0.05 blkq=32", "topk=0.1 blkq=32", "topk=0.2 blkq=32",
                    "topk=0.5 blkq=32", "control"]  # fmt: skip
    # per trial (the results table, the parent run's note, the sweep's plot): the label plus the
    # seed that tells the repeats apart
    trial_labels = [f"{label} train.seed={seed}" for seed in (0, 1) for label in LABELS]
    assert [p.label for p in pareto.trial_points(rows, "val/loss")] == trial_labels
    table = format_table(rows, "val/loss", "min")
    note = sweep_note("smoke", rows, "val/loss", "min", None, tmp_path)
    table_cells = [re.split(r"\s{2,}", line.lstrip("* ")) for line in table.splitlines()[2:-1]]
    assert [(cells[0], cells[1]) for cells in table_cells] == [
        (r.trial_id, label) for r, label in zip(rows, trial_labels, strict=True)
    ]
    for r, label in zip(rows, trial_labels, strict=True):
        assert f"| {r.trial_id} | {label} |" in note
