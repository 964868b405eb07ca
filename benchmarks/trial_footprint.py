"""What one trial costs on disk and in memory: checkpoint bytes and peak RSS, full fine-tune
against LoRA against SLA-only (train_base false), per preset.

    python -m benchmarks.trial_footprint --presets tiny small --out footprint.json
    python -m benchmarks.trial_footprint --presets medium --lora-rank 16 --steps 2

Each (preset, mode) runs in its own Python process (peak RSS is per process: ru_maxrss of that
process alone), as a real trial of the recipe with SLA on: `--steps` optimizer steps, then one
checkpoint, whose files are summed. The base model is pre-trained once beforehand, in another
process, and cached (`--base-steps`, default 10: speed and size do not depend on how trained the
base is), so no mode pays for it. Runs on the CPU unless CUDA is there.
"""

from __future__ import annotations

# Imports inside functions: each measured trial runs in its own process and imports the
# recipe there, so its peak RSS is the trial's own.
import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MODES = ("full", "lora", "sla_only")


def trial_config(preset: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig keywords of one measured trial."""
    extra = {
        "full": {},
        "lora": {"lora": {"rank": args.lora_rank}},
        "sla_only": {"train_base": False},
    }
    return {
        "model": preset, "steps": args.steps, "batch_size": 1, "log_every": args.steps,
        "eval_every": 0, "checkpoint_every": 0, "sample_steps": 1, "base_steps": args.base_steps,
        "base_cache_dir": str(args.cache), "data": {"num_train": 8, "num_val": 1},
        **extra[mode],
    }  # fmt: skip


def measure_one(preset: str, mode: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Run the trial in this process; its checkpoint's bytes and this process's peak RSS."""
    from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
    from sla_kernel_glue import SLAConfig

    train = TrainConfig.from_dict(trial_config(preset, mode, args))
    sla = SLAConfig(topk=args.topk, blkq=args.block, blkk=args.block)
    run_trial(train, sla, workdir, callback=RecordingCallback())
    (checkpoint,) = sorted(workdir.glob("checkpoint_*"))[-1:]
    files = {
        str(f.relative_to(checkpoint)): f.stat().st_size
        for f in checkpoint.rglob("*")
        if f.is_file()
    }
    return {
        "preset": preset, "mode": mode, "checkpoint_bytes": sum(files.values()), "files": files,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def run_child(preset: str, mode: str, args: argparse.Namespace) -> dict:
    """measure_one in a fresh interpreter (its own peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        cmd = [sys.executable, "-m", "benchmarks.trial_footprint", "--child", preset, mode, tmp,
               *child_flags(args)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{preset}/{mode} failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(tmp, "result.json").read_text())


def child_flags(args: argparse.Namespace) -> list[str]:
    return ["--steps", str(args.steps), "--base-steps", str(args.base_steps), "--lora-rank",
            str(args.lora_rank), "--topk", str(args.topk), "--block", str(args.block),
            "--cache", str(args.cache)]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--steps", type=int, default=2, help="optimizer steps before the checkpoint")
    p.add_argument("--base-steps", type=int, default=10)
    p.add_argument("--lora-rank", type=int, default=16, help="the LoRA mode's rank (default 16)")
    p.add_argument("--topk", type=float, default=0.25)
    p.add_argument("--block", type=int, default=32, help="SLA's blkq and blkk")
    p.add_argument(
        "--cache", type=Path, default=None, help="base-model cache (default: a temp dir)"
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--child", nargs=3, metavar=("PRESET", "MODE", "DIR"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        preset, mode, workdir = args.child
        result = measure_one(preset, mode, args, Path(workdir) / "trial")
        Path(workdir, "result.json").write_text(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="footprint-cache-") as tmp:
        args.cache = args.cache or Path(tmp)
        results = []
        for preset in args.presets:
            run_child(preset, "sla_only", args)  # pre-trains and caches the base: not measured
            for mode in args.modes:
                results.append(run_child(preset, mode, args))
                r = results[-1]
                print(f"{preset:>12} {mode:>9}: checkpoint {r['checkpoint_bytes']:>13,} bytes, "
                      f"peak RSS {r['peak_rss_mib']:8.0f} MiB", flush=True)  # fmt: skip
                if args.out:  # after every result: a run cut short keeps what it measured
                    data = {"args": child_flags(args)[:-2], "results": results}
                    args.out.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
