"""What the encoded-data cache costs and saves, on a pipeline and a folder of clips.

    python -m benchmarks.pipeline_data [--pipeline DIR] [--clips N] [--frames F] [--size S]
                                       [--out results.json]

Without --pipeline a tiny random-weight Wan2.1-style pipeline is built (speed does not depend on
the weights; its sizes do). Each phase runs in a fresh Python process, so its peak resident set
(ru_maxrss) is its own:

- encode: VAE-encode every clip and text-encode every caption into an empty cache (clips/s);
- setup_cached: a trial's set-up (TrialRecipe.setup) on the ready cache: no VAE, no text encoder;
- setup_uncached: the same trial set-up with an empty cache, so that it encodes first (what
  every trial would pay without the cache);
- decode: a trial's validation (generation + the VAE decode, loaded for it alone).
"""

from __future__ import annotations

# Imports inside functions: each phase runs in its own process and imports only what it
# measures (its peak memory is part of the result); main's tiny inputs come from tests/.
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("encode", "setup_cached", "setup_uncached", "decode")


def _train_config(pipeline: Path, clips: Path, cache: Path, frames: int, size: int):
    from orchestrator.recipe import TrainConfig

    return TrainConfig.from_dict({
        "model": str(pipeline), "steps": 1, "batch_size": 1, "log_every": 1, "sample_steps": 2,
        "data": {"source": str(clips), "frames": frames, "size": size, "num_val": 1, "cache_dir": str(cache)},
        "validation": {"prompts": ["a red square moving"], "steps": 4, "guidance_scale": 3.0},
    })  # fmt: skip


def run_phase(phase: str, args: argparse.Namespace) -> dict:
    """One phase in this process; returns its timings and peak RSS."""
    import torch

    from orchestrator.recipe.pipeline_data import prepare_encoded
    from orchestrator.recipe.train import TrialRecipe
    from sla_kernel_glue import SLAConfig

    cache = Path(args.cache) if phase != "setup_uncached" else Path(tempfile.mkdtemp())
    train = _train_config(Path(args.pipeline), Path(args.clip_dir), cache, args.frames, args.size)
    started = time.perf_counter()
    out: dict = {"phase": phase}
    if phase == "encode":
        manifest = json.loads(
            prepare_encoded(train, device=torch.device("cpu"), log=lambda _m: None).read_text()
        )
        out.update(clips=len(manifest["train"]) + len(manifest["val"]), stats=manifest["stats"])
        out["clips_per_s"] = out["clips"] / manifest["stats"]["seconds"]
    else:
        encoded = None
        if phase != "setup_uncached":
            encoded = prepare_encoded(train, device=torch.device("cpu"), log=lambda _m: None)
            started = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            recipe = TrialRecipe(
                train, SLAConfig(topk=0.5, blkq=16, blkk=16), Path(work), encoded=encoded
            )
            recipe.setup()
            out["setup_s"] = time.perf_counter() - started
            if phase == "decode":
                metrics: dict = {}
                t0 = time.perf_counter()
                recipe._validate_videos(metrics)
                out.update(validate_s=time.perf_counter() - t0, **metrics)
            recipe.cleanup()
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline_data", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--pipeline", type=Path, help="a Wan pipeline directory (default: a tiny one, built)"
    )
    p.add_argument("--clips", type=int, default=16, help="clips in the generated folder")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # a child process's phase
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--clip-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        print("RESULT " + json.dumps(run_phase(args.phase, args)), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.pipeline is None:
            from orchestrator.models.tiny_pipeline import build_tiny_pipeline

            args.pipeline = build_tiny_pipeline(tmp / "pipeline")
        from tests.media import write_caption_folder

        write_caption_folder(
            tmp / "clips", n=args.clips, frames=args.frames, size=(args.size, args.size)
        )
        results = []
        for phase in PHASES:
            cmd = [sys.executable, "-m", "benchmarks.pipeline_data", "--phase", phase,
                   "--pipeline", str(args.pipeline), "--frames", str(args.frames), "--size", str(args.size),
                   "--cache", str(tmp / "cache"), "--clip-dir", str(tmp / "clips")]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            results.append(json.loads(line[len("RESULT ") :]))
            print(json.dumps(results[-1]), flush=True)
    summary = {"clips": args.clips, "frames": args.frames, "size": args.size, "phases": results}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
