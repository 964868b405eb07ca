"""`sla-sweep`: run, resume and inspect SLA sweeps.

    sla-sweep FILE.yaml                      # same as: sla-sweep run FILE.yaml
    sla-sweep run FILE.yaml [--set key=value ...] [--address ADDR] [--verbose]
    sla-sweep resume SWEEP_DIR [--address ADDR]
    sla-sweep best SWEEP_DIR|FILE.yaml
    sla-sweep compare|infer|export|ui ...    # see `sla-sweep COMMAND --help`

Bad input gives one line on stderr and exit status 2, before Ray starts or any file is written.
Every command is in COMMANDS below: its module is imported when the parser is built, and a
module or function that is missing is an ImportError, never a command that quietly disappears.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Callable, Sequence

from orchestrator.spec import SpecError


@dataclasses.dataclass(frozen=True)
class Command:
    """Where a subcommand lives: module.add_arguments(parser) and module.handle(args) -> exit status."""

    module: str
    add_arguments: str = "add_arguments"
    handle: str = "handle"

    def load(
        self,
    ) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
        module = importlib.import_module(self.module)
        return getattr(module, self.add_arguments), getattr(module, self.handle)


SWEEP_COMMANDS = "orchestrator.sweep.commands"
COMMANDS: dict[str, Command] = {
    "run": Command(SWEEP_COMMANDS, "add_run_arguments", "run"),
    "resume": Command(SWEEP_COMMANDS, "add_resume_arguments", "resume"),
    "best": Command(SWEEP_COMMANDS, "add_best_arguments", "best"),
    "compare": Command("orchestrator.infer.compare"),
    "infer": Command("orchestrator.infer.command"),
    "export": Command("orchestrator.infer.export"),
    "ui": Command("orchestrator.ui"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sla-sweep",
        description="Sweep Sparse-Linear Attention settings on Ray, recorded in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        add_arguments, handler = command.load()
        doc = (handler.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc or None)
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


if __name__ == "__main__":
    sys.exit(main())
