"""`sla-sweep run`, `resume` and `best`: the sweep's own commands (orchestrator.cli lists them).

Bad input raises SpecError before Ray starts or any file is written; the CLI prints it as one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.report.findings import group_rows
from orchestrator.report.study import format_summary, study_verdict
from orchestrator.report.table import best_row, format_table
from orchestrator.spec import SpecError, load_spec
from orchestrator.storage import is_uri
from orchestrator.storage.records import ERROR, load_rows
from orchestrator.storage.sweep_files import find_sweep, read_sweep
from orchestrator.storage.sweep_place import open_place
from orchestrator.sweep.driver import exit_code


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="experiment YAML, e.g. experiments/topk.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML value (dotted key, YAML value), e.g. train.steps=10")  # fmt: skip
    p.add_argument(
        "--address", help="join an existing Ray cluster (default: $RAY_ADDRESS or local)"
    )
    p.add_argument("--verbose", action="store_true", help="also show the Ray workers' own output")


def run(args: argparse.Namespace) -> int:
    """Validate an experiment YAML and run its sweep: one Ray Tune trial per SLA config + the control."""
    spec = load_spec(args.file, args.overrides)  # all validation before anything starts
    from orchestrator.sweep.run import run_sweep  # Ray, MLflow, torch: not at CLI start

    outcome = run_sweep(spec, address=args.address, verbose=args.verbose)
    return exit_status(outcome)


def add_resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sweep_dir",
        help="a sweep directory or its URI (s3://bucket/prefix/<sweep>; printed when it started)",
    )
    p.add_argument(
        "--address", help="join an existing Ray cluster (default: $RAY_ADDRESS or local)"
    )
    p.add_argument("--verbose", action="store_true", help="also show the Ray workers' own output")


def resume(args: argparse.Namespace) -> int:
    """Finish an interrupted sweep; finished trials are not run again."""
    from orchestrator.sweep.run import resume_sweep  # Ray, MLflow, torch: not at CLI start

    read_sweep(args.sweep_dir)  # a clear error for something that is not a sweep
    return exit_status(resume_sweep(args.sweep_dir, address=args.address, verbose=args.verbose))


def add_best_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        help="a sweep directory or URI (s3://...), or an experiment YAML (its latest sweep)",
    )


def best(args: argparse.Namespace) -> int:
    """Show a sweep's results table and its best trial: checkpoint, MLflow run, Pareto plot."""
    place = open_place(_sweep_of(args.target))
    sweep_dir = place.local
    spec, meta = read_sweep(place)
    rows = list(load_rows(sweep_dir).values())
    print(f"sweep {place.uri}")
    print(format_table(rows, spec.metric, spec.mode))
    groups = group_rows(rows)
    if spec.repeats > 1:
        print(format_summary(groups, spec.verdict.confidence))
    print(f"verdict: {study_verdict(spec, groups).text}")
    best = best_row(rows, spec.metric, spec.mode)
    if best is None:
        print(f"no finished trial reports {spec.metric}", file=sys.stderr)
        return 1
    print(
        f"best trial: {best.trial_id}  {best.label}  {spec.metric}={best.metrics[spec.metric]:.6g}"
    )
    checkpoint = place.checkpoint(best.checkpoint) if place.remote else None
    print(f"checkpoint: {checkpoint.uri if checkpoint else best.checkpoint}")
    print(f"mlflow run: {best.run_id}  ({meta['tracking_uri']})")
    if (sweep_dir / "pareto.png").is_file():
        print(f"pareto plot: {sweep_dir / 'pareto.png'}")
    if (sweep_dir / "report" / "report.md").is_file():
        print(f"report: {sweep_dir / 'report' / 'report.md'}")
    return 0


def _sweep_of(target: str) -> str | Path:
    """A sweep URI as it is; an experiment file's latest sweep; a directory made absolute."""
    if is_uri(target):
        return target
    path = Path(target).resolve()
    if path.is_file():
        return find_sweep(load_spec(path))
    if path.is_dir():
        return path
    raise SpecError(str(target), ["no such sweep directory or experiment file"])


def exit_status(outcome) -> int:
    """0 when every trial ended well, 1 when one failed; interrupted (resumable): 128 + the
    signal that stopped it (Ctrl-C 130, SIGTERM 143, SIGHUP 129)."""
    if not outcome.complete:
        return exit_code(outcome.stopped_by)

    return 1 if any(r.status == ERROR for r in outcome.rows) else 0
