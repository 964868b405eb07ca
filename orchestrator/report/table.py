"""End-of-sweep report: the results table, results.csv and the quality-vs-attention-FLOPs plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.storage.records import FINISHED, TrialRow, format_value
from orchestrator.values import is_num

TABLE_METRICS = (
    "val/loss",
    "val/loss_gap",
    "val/attn_rel_err",
    "val/sample_psnr",
    "flops/attention_ratio",
    "perf/step_s",
)
FLOPS_METRIC = "flops/attention_ratio"


def varying_keys(rows: Sequence[TrialRow]) -> list[str]:
    """Settings whose value differs between trials (what the table's config column shows): SLA
    fields by name, searched training settings as "train.<key>"."""
    keys: dict[str, set] = {}
    for row in rows:
        for k, v in row.settings.items():
            keys.setdefault(k, set()).add(repr(v))
    return [k for k, vals in keys.items() if len(vals) > 1] or list(keys)[:1]


def short_label(row: TrialRow, keys: Sequence[str]) -> str:
    chosen = row.settings
    if row.sla is None:
        train = [f"{k}={format_value(chosen[k])}" for k in keys if k in chosen]
        return " ".join(["control", *train])
    return " ".join(f"{k}={format_value(chosen.get(k))}" for k in keys)


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


def pareto_front(rows: Sequence[TrialRow], quality: str, mode: str) -> list[TrialRow]:
    """Trials not dominated in (quality, attention FLOPs ratio); lower FLOPs is better."""
    sign = 1.0 if mode == "min" else -1.0
    pts = [
        (r, sign * r.metrics[quality], r.metrics[FLOPS_METRIC])
        for r in rows
        if is_num(r.metrics.get(quality)) and is_num(r.metrics.get(FLOPS_METRIC))
    ]
    front = []
    for r, q, f in pts:
        dominated = any((q2 <= q and f2 <= f) and (q2 < q or f2 < f) for _, q2, f2 in pts)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.metrics[FLOPS_METRIC])


def format_table(rows: Sequence[TrialRow], metric: str, mode: str) -> str:
    """A plain-text table, one row per trial, best trial marked with '*'."""
    keys = varying_keys(rows)
    best = best_row(rows, metric, mode)
    header = ["", "trial", "config", *TABLE_METRICS, "step", "status"]
    body = []
    for r in rows:
        body.append(
            [
                "*" if best is not None and r.trial_id == best.trial_id else "",
                r.trial_id,
                short_label(r, keys),
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
    """Scatter of quality against attention-FLOPs ratio with the Pareto front drawn and labelled."""
    plt = pyplot()
    keys = varying_keys(rows)
    pts = [
        r for r in rows if is_num(r.metrics.get(quality)) and is_num(r.metrics.get(FLOPS_METRIC))
    ]
    front = pareto_front(rows, quality, mode)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for r in pts:
        is_ctrl = r.sla is None
        ax.scatter(r.metrics[FLOPS_METRIC], r.metrics[quality], marker="s" if is_ctrl else "o",
                   color="black" if is_ctrl else "tab:blue", zorder=3)  # fmt: skip
        ax.annotate(short_label(r, keys), (r.metrics[FLOPS_METRIC], r.metrics[quality]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)  # fmt: skip
    if front:
        ax.plot([r.metrics[FLOPS_METRIC] for r in front], [r.metrics[quality] for r in front],
                color="tab:red", lw=1.2, ls="--", marker="o", mfc="none", ms=10,
                label="Pareto front", zorder=2)  # fmt: skip
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("attention FLOPs / dense attention FLOPs")
    ax.set_ylabel(f"{quality} ({'lower' if mode == 'min' else 'higher'} is better)")
    ax.set_title("SLA sweep: quality vs attention FLOPs")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (a driver has no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write a figure as PNG atomically (a temp file, then a rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _num(v: Any) -> str:
    if not is_num(v):
        return "-"
    return f"{v:.4g}"
