"""`python -m orchestrator.recipe`: one trial from the command line, without Ray (for debugging).

    python -m orchestrator.recipe --preset tiny --steps 30 --sla "{'topk': 0.25}" --out runs/t1
    python -m orchestrator.recipe --preset tiny --steps 30 --dense --out runs/control
    python -m orchestrator.recipe --preset tiny --steps 60 --sla "{'topk': 0.25}" --out runs/t1 \
        --resume runs/t1/checkpoint_000030
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.models.wan_presets import PRESETS
from sla_kernel_glue import SLAConfig

from .config import DataConfig, TrainConfig
from .config_fields import cli_fields, value_type
from .train import run_trial


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.recipe", description=__doc__.splitlines()[0]
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", choices=list(PRESETS), default="tiny", help="model size preset")
    model.add_argument(
        "--model-dir", help="a local diffusers WanTransformer3DModel directory instead"
    )
    attention = p.add_mutually_exclusive_group(required=True)
    attention.add_argument(
        "--sla", help="SLA config: JSON or a Python dict literal, e.g. \"{'topk': 0.1}\""
    )
    attention.add_argument("--dense", action="store_true", help="full attention: the control trial")
    p.add_argument("--out", type=Path, required=True, help="trial directory (checkpoints go here)")
    p.add_argument("--resume", type=Path, help="continue from this checkpoint directory")
    p.add_argument(
        "--data", default="digits", help="'digits' or a folder of clips (.pt or PNG subfolders)"
    )
    p.add_argument("--frames", type=int, help="clip frames (default: the preset's)")
    p.add_argument("--size", type=int, help="clip height = width (default: the preset's)")
    add_train_arguments(p)
    return p


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """--NAME for each TrainConfig field declared for the command line, its type, default and help
    from the field's declaration (a bool is a flag; a true-by-default one has its own option)."""
    for f in cli_fields(TrainConfig):
        kind = value_type(TrainConfig, f.name)
        doc = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        option = "--" + f.name.replace("_", "-")
        if kind is bool and f.metadata["flag"]:
            flag, flag_help = f.metadata["flag"]
            p.add_argument(
                flag, dest=f.name, action="store_false", default=f.default, help=flag_help
            )
        elif kind is bool:
            p.add_argument(option, dest=f.name, action="store_true", default=f.default, help=doc)
        else:
            p.add_argument(
                option,
                dest=f.name,
                type=None if kind is str else kind,
                default=f.default,
                help=f"{doc} (default: %(default)s)",
            )


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, SLAConfig | None]:
    """TrainConfig and SLAConfig from parsed arguments (both validated; errors name the key)."""
    train = TrainConfig(
        model=args.model_dir or args.preset,
        data=DataConfig(source=args.data, frames=args.frames, size=args.size),
        **{f.name: getattr(args, f.name) for f in cli_fields(TrainConfig)},
    )
    return train, (None if args.dense else SLAConfig.parse(args.sla))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        train, sla = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    metrics = run_trial(train, sla, args.out, resume_from=args.resume)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
