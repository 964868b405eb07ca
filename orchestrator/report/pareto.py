"""Quality against attention FLOPs: the points (one per trial, or one per config: the mean over
its repeats), the Pareto front among them, and pareto.png, the plot of both.

The sweep's pareto.png (beside results.csv) plots the trials; the study report's
report/pareto.png plots the configs' means with their spread. Both go through `write_pareto_png`,
and so through `pareto_front`: the front is computed here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from orchestrator.report.figures import pyplot, save_figure
from orchestrator.report.findings import FLOPS, ConfigGroup
from orchestrator.report.labels import config_label, label_keys
from orchestrator.storage.records import TrialRow
from orchestrator.values import is_num


@dataclasses.dataclass(frozen=True)
class Point:
    """A trial, or a config's mean over its repeats, in the quality-vs-FLOPs plane."""

    name: str  # the trial's id, or the config's label
    label: str  # the config's label (labels.config_label): what the plot annotates
    control: bool
    flops: float  # attention FLOPs / dense attention FLOPs
    quality: float
    spread: float | None = None  # std of quality over the config's repeats (None: one value)


def trial_points(rows: Sequence[TrialRow], quality: str) -> list[Point]:
    """One point per trial that reports both quality and the FLOPs ratio, labelled by the
    settings that differ between the trials (the repeats' seeds too)."""
    keys = label_keys(rows, repeats=True)
    return [
        Point(r.trial_id, config_label(r, keys), r.sla is None,
              float(r.metrics[FLOPS]), float(r.metrics[quality]))
        for r in rows
        if is_num(r.metrics.get(quality)) and is_num(r.metrics.get(FLOPS))
    ]  # fmt: skip


def config_points(groups: Sequence[ConfigGroup], quality: str) -> list[Point]:
    """One point per config with finished repeats that report both: the means, quality's std."""
    points = []
    for g in groups:
        flops, q = g.spread(FLOPS), g.spread(quality)
        if flops is not None and q is not None:
            points.append(Point(g.label, g.label, g.control, flops.mean, q.mean, q.std))
    return points


def pareto_front(points: Sequence[Point], mode: str) -> list[Point]:
    """The points no other point dominates (at least as good in quality, `mode` min or max, and
    in FLOPs, lower is better; strictly better in one), by increasing FLOPs."""
    sign = 1.0 if mode == "min" else -1.0

    def dominates(a: Point, b: Point) -> bool:
        qa, qb = sign * a.quality, sign * b.quality
        return qa <= qb and a.flops <= b.flops and (qa < qb or a.flops < b.flops)

    front = [p for p in points if not any(dominates(o, p) for o in points)]
    return sorted(front, key=lambda p: p.flops)


def write_pareto_png(
    points: Sequence[Point], path: Path, quality: str, mode: str, *, title: str
) -> Path:
    """pareto.png: every point (the control a black square) with its label and, for a config's
    mean over repeats, its std as an error bar; the Pareto front dashed through its points."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for p in points:
        ax.errorbar(p.flops, p.quality, yerr=p.spread, fmt="s" if p.control else "o",
                    capsize=3, color="black" if p.control else "tab:blue", zorder=3)  # fmt: skip
        ax.annotate(p.label, (p.flops, p.quality), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)  # fmt: skip
    front = pareto_front(points, mode)
    if front:
        ax.plot([p.flops for p in front], [p.quality for p in front], color="tab:red", lw=1.2,
                ls="--", marker="o", mfc="none", ms=10, label="Pareto front", zorder=2)  # fmt: skip
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("attention FLOPs / dense attention FLOPs")
    ax.set_ylabel(f"{quality} ({'lower' if mode == 'min' else 'higher'} is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
