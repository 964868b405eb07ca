"""`sla-sweep`: run, resume and inspect SLA sweeps.

    sla-sweep FILE.yaml                      # same as: sla-sweep run FILE.yaml
    sla-sweep run FILE.yaml [--set key=value ...] [--address ADDR] [--verbose]
    sla-sweep resume SWEEP_DIR [--address ADDR]
    sla-sweep best SWEEP_DIR|FILE.yaml

Bad input gives one line on stderr and exit status 2, before Ray starts or any file is written.
Other commands (infer, export, ui) register themselves through COMMANDS below.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.spec import SpecError

# name -> (add_arguments(subparser), handler(args) -> exit status); other modules append here.
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="experiment YAML, e.g. experiments/topk.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML value (dotted key, YAML value), e.g. train.steps=10")  # fmt: skip
    p.add_argument("--address", help="join an existing Ray cluster (default: $RAY_ADDRESS or local)")
    p.add_argument("--verbose", action="store_true", help="also show the Ray workers' own output")


def _run(args: argparse.Namespace) -> int:
    from orchestrator.spec import load_spec

    spec = load_spec(args.file, args.overrides)  # all validation before anything starts
    from orchestrator.sweep import run_sweep

    outcome = run_sweep(spec, address=args.address, verbose=args.verbose)
    return _exit_status(outcome)


def _add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", type=Path, help="a sweep directory (printed when the sweep started)")
    p.add_argument("--address", help="join an existing Ray cluster (default: $RAY_ADDRESS or local)")
    p.add_argument("--verbose", action="store_true", help="also show the Ray workers' own output")


def _resume(args: argparse.Namespace) -> int:
    from orchestrator.sweep import read_sweep, resume_sweep

    read_sweep(args.sweep_dir.resolve())  # a clear error for something that is not a sweep
    return _exit_status(resume_sweep(args.sweep_dir, address=args.address, verbose=args.verbose))


def _add_best(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", type=Path, help="a sweep directory, or an experiment YAML (its latest sweep)")


def _best(args: argparse.Namespace) -> int:
    from orchestrator.report import best_row, format_table
    from orchestrator.spec import load_spec
    from orchestrator.sweep import find_sweep, read_sweep
    from orchestrator.sweep_progress import load_rows

    target = args.target.resolve()
    if target.is_file():
        sweep_dir = find_sweep(load_spec(target))
    elif target.is_dir():
        sweep_dir = target
    else:
        raise SpecError(str(args.target), ["no such sweep directory or experiment file"])
    spec, meta = read_sweep(sweep_dir)
    rows = list(load_rows(sweep_dir).values())
    print(f"sweep {sweep_dir}")
    print(format_table(rows, spec.metric, spec.mode))
    best = best_row(rows, spec.metric, spec.mode)
    if best is None:
        print(f"no finished trial reports {spec.metric}", file=sys.stderr)
        return 1
    print(f"best trial: {best.trial_id}  {best.label}  {spec.metric}={best.metrics[spec.metric]:.6g}")
    print(f"checkpoint: {best.checkpoint}")
    print(f"mlflow run: {best.run_id}  ({meta['tracking_uri']})")
    if (sweep_dir / "pareto.png").is_file():
        print(f"pareto plot: {sweep_dir / 'pareto.png'}")
    return 0


COMMANDS["run"] = (_add_run, _run)
COMMANDS["resume"] = (_add_resume, _resume)
COMMANDS["best"] = (_add_best, _best)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sla-sweep", description="Sweep Sparse-Linear Attention settings on Ray, recorded in MLflow."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_plugins()
    for name, (add_arguments, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=(handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else None)
        add_arguments(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sla-sweep` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = ["run", *argv]  # `sla-sweep FILE.yaml` is `sla-sweep run FILE.yaml`
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SpecError as exc:
        print(f"sla-sweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sla-sweep: interrupted", file=sys.stderr)
        return 130


def _exit_status(outcome) -> int:
    if not outcome.complete:
        return 130  # interrupted: resumable
    return 1 if any(r.status == "ERROR" for r in outcome.rows) else 0


# Subcommands that live in other modules, each with add_arguments(parser) and handle(args).
PLUGINS = {
    "infer": "orchestrator.infer",
    "compare": "orchestrator.compare",
    "export": "orchestrator.export_cmd",
    "ui": "orchestrator.ui",
}


def _register_plugins() -> None:
    """Commands other modules provide (infer, export, ui), when they are present."""
    import importlib

    for name, module_name in PLUGINS.items():
        if name in COMMANDS:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        COMMANDS[name] = (module.add_arguments, module.handle)


if __name__ == "__main__":
    sys.exit(main())
