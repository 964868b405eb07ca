"""The report a user sends to their team: <sweep>/report/report.md with its images.

    report/
      report.md          the verdict, the table of every config's mean and spread over its
                         repeats, and the three figures below, with the sweep's settings
      summary.csv        per config and metric: n, mean, std and the 95 % interval
      verdict.json       the verdict and every config's comparison with the control
      pareto.png         quality against attention FLOPs, config means with error bars (std)
      loss_curves.png    train/loss and val/loss of every trial over its steps, one colour per config
      samples.png        the control's and each config's samples for the same prompt and noise

Written at the end of `sla-sweep run` / `resume` and logged to the parent MLflow run. Samples:
a preset sweep's are generated here from each config's first finished checkpoint (one clip,
seed 0, CUDA when there is one); a pipeline sweep's are the frame grids its trials' validation
already wrote (the same prompts and seeds for every trial). Ray-free.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from orchestrator.report.figures import pyplot, save_figure
from orchestrator.report.findings import ConfigGroup, Verdict, group_rows, judge, name_objective
from orchestrator.report.pareto import config_points, write_pareto_png
from orchestrator.report.samples import config_strips
from orchestrator.report.table import TABLE_METRICS
from orchestrator.spec.schema import ExperimentSpec
from orchestrator.spec.search import control_value
from orchestrator.storage.records import TrialRow, read_json
from orchestrator.values import is_num

REPORT_DIR = "report"
TUNE_DIR = "tune"


@dataclasses.dataclass(frozen=True)
class Findings:
    verdict: Verdict
    groups: list[ConfigGroup]
    files: list[Path]  # what was written (report.md first)


def write_report(spec: ExperimentSpec, sweep_dir: Path, rows: Sequence[TrialRow]) -> Findings:
    """Write <sweep>/report/ (module docstring); returns the verdict, the groups and the files."""
    out = Path(sweep_dir) / REPORT_DIR
    out.mkdir(exist_ok=True)
    groups = group_rows(rows)
    verdict = study_verdict(spec, groups)
    files = [
        write_summary_csv(groups, out / "summary.csv", spec.verdict.confidence),
        _write_json(out / "verdict.json", verdict.to_json()),
        write_pareto_png(
            config_points(groups, spec.verdict.metric),
            out / "pareto.png",
            spec.verdict.metric,
            spec.verdict.mode,
            title="quality vs attention FLOPs (mean ± std over repeats)",
        ),
        plot_loss_curves(groups, Path(sweep_dir), out / "loss_curves.png"),
    ]
    samples = write_sample_panel(groups, out / "samples.png")
    files += [samples] if samples else []
    md = out / "report.md"
    md.write_text(report_markdown(spec, groups, verdict, samples is not None))
    return Findings(verdict, groups, [md, *files])


def report_findings(spec, sweep_dir: Path, rows, recorder, parent_run_id: str):
    """write_report, then say the verdict (and, with repeats, the table of spreads) and log the
    report folder to the parent run under report/ (the verdict's tag and the per-config metrics:
    mlflow_review.log_review, from report/verdict.json)."""
    findings = write_report(spec, sweep_dir, rows)
    if spec.repeats > 1:
        print(format_summary(findings.groups, spec.verdict.confidence))
    print(f"[sla-sweep] verdict: {findings.verdict.text}")
    recorder.log_artifacts(parent_run_id, findings.files[0].parent, REPORT_DIR)
    return findings


def format_summary(groups: Sequence[ConfigGroup], confidence: float = 0.95) -> str:
    """A plain-text table: one row per config, each metric as mean ± std over its repeats."""
    header = ["config", "n", *TABLE_METRICS]
    body = []
    for g in groups:
        cells = [g.label, str(len(g.finished))]
        for m in TABLE_METRICS:
            s = g.spread(m, confidence)
            cells.append("-" if s is None else s.text())
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, *body]]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_summary_csv(groups: Sequence[ConfigGroup], path: Path, confidence: float) -> Path:
    """summary.csv: config, control, metric, n, mean, std, ci_low, ci_high (one row per pair)."""
    metrics = sorted({k for g in groups for r in g.finished for k in r.metrics})
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["config", "control", "metric", "n", "mean", "std", "ci_low", "ci_high"])
        for g in groups:
            for m in metrics:
                s = g.spread(m, confidence)
                if s is not None:
                    out.writerow([g.label, g.control, m, s.n, s.mean, *(
                        "" if v is None else v for v in (s.std, s.low, s.high))])  # fmt: skip
    return path


def report_markdown(
    spec: ExperimentSpec, groups: Sequence[ConfigGroup], verdict: Verdict, samples: bool
) -> str:
    """report.md: the verdict first, then the table with spreads, then the figures."""
    v = spec.verdict
    n_trials = sum(len(g.rows) for g in groups)
    lines = [
        f"# SLA sweep `{spec.name}`", "",
        f"{len(groups)} configs x {spec.repeats} repeat(s) = {n_trials} trials; quality is "
        f"`{v.metric}` ({'lower' if v.mode == 'min' else 'higher'} is better).", "",
        _objective_line(spec), "",
        "## Verdict", "", verdict.text, "",
        "## Every config (mean ± std over repeats; 95 % intervals in summary.csv)", "",
        "| config | n | " + " | ".join(f"`{m}`" for m in TABLE_METRICS) + " |",
        "|---" * (len(TABLE_METRICS) + 2) + "|",
    ]  # fmt: skip
    for g in groups:
        cells = [(s.text() if (s := g.spread(m)) else "-") for m in TABLE_METRICS]
        lines.append(f"| {g.label} | {len(g.finished)} | " + " | ".join(cells) + " |")
    lines += ["", "## Quality against attention FLOPs", "", "![pareto](pareto.png)", "",
              "## Loss curves", "", "![loss curves](loss_curves.png)", ""]  # fmt: skip
    if samples:
        lines += ["## Samples (same prompt and noise)", "", "![samples](samples.png)", ""]
    lines += ["## Settings", "", "```yaml", _yaml(spec.source), "```", ""]
    return "\n".join(lines)


def study_verdict(spec: ExperimentSpec, groups: list[ConfigGroup]) -> Verdict:
    """The verdict over the config groups, naming the training objective (report and `best`)."""
    objective, searched = training_objective(spec)
    return name_objective(judge(groups, spec.verdict), objective, searched=searched)


def training_objective(spec: ExperimentSpec) -> tuple[str, bool]:
    """(the objective the control trained with, whether the search varies it): the study's own
    objective when it is not searched."""
    for p in spec.train_space:
        if p.field == "train.objective":
            return str(control_value(p)), True
    return str(spec.train.get("objective", "flow_matching")), False


def _objective_line(spec: ExperimentSpec) -> str:
    objective, searched = training_objective(spec)
    what = OBJECTIVE_TEXT.get(objective, objective)
    if searched:
        return (f"Training objective: searched (each config's label names it); the control "
                f"trained with `{objective}` ({what}).")  # fmt: skip
    return f"Training objective: `{objective}` ({what})."


OBJECTIVE_TEXT = {
    "flow_matching": "the flow-matching loss on the data",
    "distill": "the dense base's velocity, as a frozen teacher",
}


def plot_loss_curves(groups: Sequence[ConfigGroup], sweep_dir: Path, path: Path) -> Path:
    """train/loss and val/loss of every trial over its steps (Tune's result.json per trial)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        color = "black" if g.control else colors[i % len(colors)]
        for j, row in enumerate(g.rows):
            history = trial_history(sweep_dir, row.trial_id)
            for ax, metric in zip(axes, ("train/loss", "val/loss"), strict=True):
                steps = [(s, v) for s, v in history.get(metric, [])]
                if steps:
                    ax.plot(*zip(*steps, strict=True), color=color, alpha=0.8, lw=1,
                            marker="." if metric == "val/loss" else None,
                            label=g.label if j == 0 else None)  # fmt: skip
    for ax, metric in zip(axes, ("train/loss", "val/loss"), strict=True):
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def trial_history(sweep_dir: Path, trial_id: str) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of what the trial reported (its result.json lines)."""
    history: dict[str, dict[int, float]] = {}
    for result_file in sorted((sweep_dir / TUNE_DIR).glob(f"*{trial_id}*/result.json")):
        for line in result_file.read_text().splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            step = result.get("step")
            for key, value in result.items():
                if "/" in key and is_num(value) and isinstance(step, int):
                    history.setdefault(key, {}).setdefault(step, float(value))
    return {k: sorted(v.items()) for k, v in history.items()}


def write_sample_panel(groups: Sequence[ConfigGroup], path: Path) -> Path | None:
    """One image strip per config (control first), the same prompt and noise; None if none."""
    strips = config_strips(groups)
    if not strips:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(strips), 1, figsize=(8, 1.4 * len(strips) + 0.4), dpi=120,
                             squeeze=False)  # fmt: skip
    for ax, (label, image) in zip(axes[:, 0], strips, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(label, fontsize=8, loc="left")
        ax.axis("off")
    return save_figure(fig, path)


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def _yaml(source) -> str:
    return yaml.safe_dump(source, sort_keys=False).rstrip()


def read_verdict(sweep_dir: Path) -> dict | None:
    """verdict.json of a sweep's report (None before the sweep's first end)."""
    path = Path(sweep_dir) / REPORT_DIR / "verdict.json"
    return read_json(path) if path.is_file() else None
