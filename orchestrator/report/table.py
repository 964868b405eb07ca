"""End-of-sweep report: the results table, results.csv and the quality-vs-attention-FLOPs plot
(one point per trial)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.report.labels import config_label, label_keys
from orchestrator.report.pareto import trial_points, write_pareto_png
from orchestrator.storage.records import FINISHED, TrialRow
from orchestrator.values import is_num

TABLE_METRICS = (
    "val/loss",
    "val/loss_gap",
    "val/distill_loss",
    "val/attn_rel_err",
    "val/sample_psnr",
    "flops/attention_ratio",
    "perf/step_s",
)


def best_row(rows: Sequence[TrialRow], metric: str, mode: str) -> TrialRow | None:
    """The finished SLA trial with the best value of `metric` (the full-attention control is the
    reference, never "best"); None when no such trial has it."""
    scored = [
        r for r in rows
        if r.sla is not None and r.status == FINISHED and is_num(r.metrics.get(metric))
    ]  # fmt: skip
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda r: r.metrics[metric])


def format_table(rows: Sequence[TrialRow], metric: str, mode: str) -> str:
    """A plain-text table, one row per trial, best trial marked with '*'."""
    keys = label_keys(rows, repeats=True)
    best = best_row(rows, metric, mode)
    header = ["", "trial", "config", *TABLE_METRICS, "step", "status"]
    body = []
    for r in rows:
        body.append(
            [
                "*" if best is not None and r.trial_id == best.trial_id else "",
                r.trial_id,
                config_label(r, keys),
                *(_num(r.metrics.get(m)) for m in TABLE_METRICS),
                str(r.step),
                r.status,
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if best is not None:
        lines.append(f"* best by {metric} ({mode}): {best.trial_id} {best.label}")
    return "\n".join(lines)


def write_csv(rows: Sequence[TrialRow], path: Path) -> Path:
    """results.csv: trial, status, step, every SLA field, every searched training setting, every
    metric seen, checkpoint."""
    sla_keys = sorted({k for r in rows for k in (r.sla or {})})
    train_keys = sorted({k for r in rows for k in r.train})
    metric_keys = sorted({k for r in rows for k in r.metrics})
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["trial_id", "control", "status", "step", *(f"sla.{k}" for k in sla_keys),
                      *(f"train.{k}" for k in train_keys), *metric_keys, "checkpoint",
                      "mlflow_run_id"])  # fmt: skip
        for r in rows:
            out.writerow(
                [r.trial_id, r.sla is None, r.status, r.step,
                 *(("" if r.sla is None else r.sla.get(k, "")) for k in sla_keys),
                 *(r.train.get(k, "") for k in train_keys),
                 *(r.metrics.get(k, "") for k in metric_keys), r.checkpoint or "", r.run_id or ""]
            )  # fmt: skip
    tmp.replace(path)
    return path


def plot_pareto(rows: Sequence[TrialRow], path: Path, quality: str, mode: str) -> Path:
    """The sweep's pareto.png: every trial's quality against its attention-FLOPs ratio, the
    Pareto front drawn through its trials."""
    points = trial_points(rows, quality)
    return write_pareto_png(
        points, path, quality, mode, title="SLA sweep: quality vs attention FLOPs"
    )


def _num(v: Any) -> str:
    if not is_num(v):
        return "-"
    return f"{v:.4g}"
