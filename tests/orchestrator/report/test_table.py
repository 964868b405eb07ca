"""The end-of-sweep report: best trial, Pareto front, table, results.csv, plot."""

from __future__ import annotations

import csv

from orchestrator.report.pareto import pareto_front, trial_points
from orchestrator.report.table import (
    TrialRow,
    best_row,
    format_table,
    plot_pareto,
    write_csv,
)


def rows() -> list[TrialRow]:
    def row(tid, topk, loss, ratio, status="TERMINATED"):
        m = {"val/loss": loss, "flops/attention_ratio": ratio}
        return TrialRow(tid, None if topk is None else {"topk": topk, "blkq": 16}, status, 10, m)

    return [
        row("a", 0.05, 0.90, 0.10),  # cheapest: on the front
        row("b", 0.1, 0.80, 0.20),  # on the front
        row("c", 0.2, 0.85, 0.30),  # dominated by b (worse loss, more FLOPs)
        row("d", 0.5, 0.70, 0.60),  # best loss of the SLA trials: on the front
        row("e", None, 0.60, 1.00),  # control: best loss overall, most FLOPs: on the front
        row("f", 0.3, 0.50, 0.40, status="ERROR"),  # errored: never best
    ]


def test_best_is_the_best_finished_sla_trial_never_the_control():
    assert best_row(rows(), "val/loss", "min").trial_id == "d"
    assert best_row(rows(), "val/loss", "max").trial_id == "a"
    assert best_row([r for r in rows() if r.sla is None], "val/loss", "min") is None


def test_pareto_front_in_quality_and_flops():
    points = trial_points([r for r in rows() if r.status == "TERMINATED"], "val/loss")
    assert [p.name for p in pareto_front(points, "min")] == ["a", "b", "d", "e"]
    # maximising the metric flips which trials dominate
    assert [p.name for p in pareto_front(points, "max")] == ["a"]


def test_table_csv_and_plot(tmp_path):
    table = format_table(rows(), "val/loss", "min")
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows()) + 1
    assert lines[-1].startswith("* best by val/loss (min): d")
    assert "control" in table and "topk=0.05" in table and "ERROR" in table
    path = write_csv(rows(), tmp_path / "results.csv")
    with path.open() as fh:
        read = list(csv.DictReader(fh))
    assert [r["trial_id"] for r in read] == list("abcdef")
    assert read[4]["control"] == "True" and read[4]["sla.topk"] == ""
    assert float(read[1]["val/loss"]) == 0.80
    png = plot_pareto(rows(), tmp_path / "pareto.png", "val/loss", "min").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*")), "written atomically"


def test_searched_training_settings_show_in_table_csv_and_plot_labels(tmp_path):
    from orchestrator.report.labels import config_label, label_keys

    def row(tid, topk, lr, loss):
        m = {"val/loss": loss, "flops/attention_ratio": 1.0 if topk is None else topk}
        sla = None if topk is None else {"topk": topk}
        return TrialRow(tid, sla, "TERMINATED", 10, m, train={"lr": lr, "lora.rank": 4})

    trials = [row("a", 0.1, 1e-4, 0.9), row("b", 0.1, 1e-3, 0.8), row("c", 0.2, 1e-4, 0.7),
              row("ctrl", None, 1e-4, 0.6)]  # fmt: skip
    keys = label_keys(trials, repeats=True)
    assert keys == ["topk", "train.lr"], "the fixed lora.rank is not a column"
    assert config_label(trials[1], keys) == "topk=0.1 train.lr=0.001"
    assert config_label(trials[3], keys) == "control train.lr=0.0001"  # what the plot annotates
    table = format_table(trials, "val/loss", "min")
    assert "topk=0.2 train.lr=0.0001" in table
    assert (
        table.splitlines()[-1]
        == "* best by val/loss (min): c topk=0.2 train.lr=0.0001 train.lora.rank=4"
    )
    with write_csv(trials, tmp_path / "results.csv").open() as fh:
        read = list(csv.DictReader(fh))
    assert [r["train.lr"] for r in read] == ["0.0001", "0.001", "0.0001", "0.0001"]
    assert {r["train.lora.rank"] for r in read} == {"4"}
