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
    defaults = TrainConfig()
    for key in (
        "steps",
        "batch_size",
        "grad_accum",
        "warmup_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "base_steps",
        "seed",
        "sample_steps",
    ):
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=getattr(defaults, key))
    for key in ("lr", "base_lr", "weight_decay", "max_grad_norm", "timestep_shift"):
        p.add_argument(f"--{key.replace('_', '-')}", type=float, default=getattr(defaults, key))
    p.add_argument("--lr-schedule", default=defaults.lr_schedule)
    p.add_argument("--mixed-precision", default=defaults.mixed_precision)
    p.add_argument("--timestep-sampling", default=defaults.timestep_sampling)
    p.add_argument(
        "--freeze-base", action="store_true", help="train only SLA's proj_l (train_base false)"
    )
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    p.add_argument("--base-cache-dir", help="where pre-trained base models are cached")
    return p


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, SLAConfig | None]:
    """TrainConfig and SLAConfig from parsed arguments (both validated; errors name the key)."""
    train = TrainConfig(
        model=args.model_dir or args.preset,
        data=DataConfig(source=args.data, frames=args.frames, size=args.size),
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        train_base=not args.freeze_base,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        timestep_sampling=args.timestep_sampling,
        timestep_shift=args.timestep_shift,
        log_every=args.log_every,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        sample_steps=args.sample_steps,
        base_steps=args.base_steps,
        base_lr=args.base_lr,
        base_cache_dir=args.base_cache_dir,
        gradient_checkpointing=args.gradient_checkpointing,
        compile=args.compile,
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
