"""The Wan2.1-T2V-1.3B study end to end, as a user runs it, on random weights (nothing downloaded).

    python -m benchmarks.wan_study inputs --work W              # pipeline + clips (GPU: full size)
    python -m benchmarks.wan_study run --work W --out OUT       # the study, then best/infer/export
    python -m benchmarks.wan_study inputs --work W --tiny       # the same at tiny size (CPU)
    python -m benchmarks.wan_study run --work W --out OUT --tiny

`inputs` writes W/pipeline, a diffusers WanPipeline directory with Wan2.1-T2V-1.3B's released
configurations (the 30-layer WanTransformer3DModel, AutoencoderKLWan, a UMT5-XXL-shaped encoder,
a word-level tokenizer trained here, the released UniPC flow-matching scheduler), built on the
GPU and saved as safetensors (transformer and VAE float32 as released; the text encoder in bf16,
which halves its 22.7 GB), and W/clips, a folder of captioned 480x832 MP4 clips at 16 fps with 81+
frames (moving shapes on gradients: speed does not depend on what the pixels show).

`run` runs the user's commands in turn, each timed, with the GPU sampled every second
(nvidia-smi) into OUT/gpu.csv:
- sweep: `sla-sweep experiments/wan2.1-t2v-1.3b.yaml --set model.path=... --set data.source=...`
  with a short training (STUDY_SETTINGS: topk 0.05 and the control, a few steps, validation on);
- use: `best`, `infer --prompt ... --compile` with SLA and dense (50 steps at the study's size),
  `export`, then stock `WanPipeline.from_pretrained` on the export generating 2 steps;
- lora (asked for with --phases): a second sweep of LoRA trials, two sharing the GPU
  (LORA_SETTINGS), each trial's peak memory in its perf/peak_gpu_mib.
OUT/summary.json holds every command's wall time, the sweep's own timings.json, each config's
perf/* metrics (from the sweep report's summary.csv), infer's seconds per video, the GPU's busy
share per command (and for the sweep before and after its encode) and the projection of a trial's
fixed costs onto a 1000-step trial. Each command's output goes to OUT/<command>.log, its start and
end to OUT/marks.json as it happens, so `summarize --out OUT` rebuilds the summary of a run that
was cut short.

The inputs are written by benchmarks.wan_study_inputs, the GPU sampled by benchmarks.gpu_sampler
and OUT/summary.json written by benchmarks.wan_study_summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_sampler import GpuSampler
from benchmarks.wan_study_inputs import (
    CAPTIONS,
    CLIPS,
    EXPERIMENT,
    MEASURED_VALIDATION_STEPS,
    PROMPT,
    ROOT,
    write_clips,
    write_pipeline,
)
from benchmarks.wan_study_summary import summarize, write_json

# What the device run overrides in the experiment (a short study; everything else as shipped)
STUDY_SETTINGS = {
    "full": [
        "sla.topk={grid: [0.05]}",
        "train.steps=6",
        "train.log_every=1",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "data.num_val=1",
        f"validation.prompts=[{PROMPT!r}]",
        f"validation.steps={MEASURED_VALIDATION_STEPS}",
    ],
    "tiny": [
        "sla.topk={grid: [0.5]}",
        "sla.blkq=16",
        "sla.blkk=16",
        "sla.backend=torch",
        "data.frames=9",
        "data.size=[32, 48]",
        "data.num_val=1",
        "train.steps=2",
        "train.grad_accum=1",
        "train.log_every=1",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.warmup_steps=0",
        "train.compile=false",
        "train.mixed_precision='no'",
        "train.gradient_checkpointing=false",
        f"validation.prompts=[{PROMPT!r}]",
        "validation.steps=2",
        "resources={workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 0}",
    ],
}
# The `lora` phase: a second sweep of LoRA trials (gradient checkpointing as shipped) two at a
# time on one GPU (fractional gpus_per_worker), over the first sweep's cache
LORA_SETTINGS = {
    "full": [
        "train.lora={rank: 16}",
        "sla.topk={grid: [0.05, 0.1]}",
        "control=false",
        "train.steps=4",
        "resources={workers_per_trial: 1, cpus_per_worker: 6, gpus_per_worker: 0.5}",
        "max_concurrent_trials=2",
    ],
    "tiny": [
        "train.lora={rank: 4}",
        "sla.topk={grid: [0.5, 0.25]}",
        "control=false",
        "max_concurrent_trials=2",
    ],
}
INFER_SETTINGS = {
    "full": ["--steps", "50", "--compile"],
    "tiny": ["--steps", "2", "--device", "cpu"],
}


# ---- run ---------------------------------------------------------------------------------------
def run_command(name: str, argv: list[str], out: Path, marks: dict) -> float:
    """Run argv with its output (each line stamped with the unix time) in OUT/<name>.log, its start
    and end in OUT/marks.json; returns the wall seconds; raises on a non-zero exit."""
    started = time.time()
    marks[name] = {"start": started, "argv": argv}
    write_json(out / "marks.json", marks)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (out / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=ROOT, env=env)  # fmt: skip
        for line in proc.stdout:
            log.write(f"{time.time():.3f} {line}")
            log.flush()
        code = proc.wait()
    marks[name].update(end=time.time(), rc=code)
    write_json(out / "marks.json", marks)
    print(f"[wan_study] {name}: exit {code} in {time.time() - started:.1f} s", flush=True)
    if code != 0:
        raise RuntimeError(f"{name} exited {code}; see {out / (name + '.log')}")
    return time.time() - started


def sweep_dir(runs: Path, name: str = "wan-study") -> Path:
    found = sorted(p for p in runs.glob(f"{name}-*") if p.is_dir())
    if not found:
        raise RuntimeError(f"no sweep directory under {runs}")
    return found[-1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = "tiny" if args.tiny else "full"
    work, out = args.work.absolute(), args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    runs, marks = work / "runs", {}
    write_json(out / "host.json", _host())
    python = [sys.executable, "-m", "orchestrator"]
    with GpuSampler(out / "gpu.csv"):
        try:
            if "sweep" in args.phases:
                argv = sweep_argv(work, runs, "wan-study", [*STUDY_SETTINGS[size], *args.set])
                run_command("sweep", argv, out, marks)
                sweep = sweep_dir(runs)
                shutil.copy(sweep / "timings.json", out / "timings.json")
                shutil.copy(sweep / "results.csv", out / "results.csv")
                shutil.copy(sweep / "report" / "summary.csv", out / "summary.csv")
            if "use" in args.phases:
                sweep = sweep_dir(runs)
                run_command("best", [*python, "best", str(sweep)], out, marks)
                for attention in ("sla", "dense"):
                    videos = work / f"videos-{attention}"
                    shutil.rmtree(videos, ignore_errors=True)
                    run_command(f"infer_{attention}", [
                        *python, "infer", str(sweep), "--attention", attention,
                        "--prompt", PROMPT, "--prompt", CAPTIONS[0],
                        "--out", str(videos), *INFER_SETTINGS[size],
                    ], out, marks)  # fmt: skip
                    shutil.copy(videos / "videos.json", out / f"videos-{attention}.json")
                export = work / "export"
                shutil.rmtree(export, ignore_errors=True)
                run_command("export", [*python, "export", str(sweep), str(export)], out, marks)
                run_command("stock_load", [sys.executable, "-m", "benchmarks.wan_study", "stock",
                                           str(export), "--size", size], out, marks)  # fmt: skip
            if "lora" in args.phases:
                settings = [*STUDY_SETTINGS[size], *LORA_SETTINGS[size]]
                argv = sweep_argv(work, work / "runs-lora", "lora-study", settings)
                run_command("sweep_lora", argv, out, marks)
                lora = sweep_dir(work / "runs-lora", "lora-study")
                shutil.copy(lora / "timings.json", out / "lora-timings.json")
                shutil.copy(lora / "report" / "summary.csv", out / "lora-summary.csv")
        finally:
            summary = summarize(out)
    return summary


def sweep_argv(work: Path, runs: Path, name: str, settings: list[str]) -> list[str]:
    """The user's sweep command on W's pipeline and clips, results under `runs`."""
    sets = [f"model.path={work / 'pipeline'}", f"data.source={work / 'clips'}",
            f"storage.results_dir={runs}", f"name={name}", *settings]  # fmt: skip
    argv = [sys.executable, "-m", "orchestrator", str(EXPERIMENT)]
    for item in sets:
        argv += ["--set", item]
    return argv


def _host() -> dict[str, Any]:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    for name in ("triton", "diffusers", "transformers", "ray", "mlflow", "accelerate"):
        with contextlib.suppress(Exception):
            info[name] = __import__(name).__version__
    return info


def stock(export: Path, size: str) -> dict[str, Any]:
    """Stock diffusers on the export: WanPipeline.from_pretrained, then 2 denoising steps."""
    import torch
    from diffusers import WanPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, frames, (height, width) = CLIPS[size]
    started = time.perf_counter()
    pipe = WanPipeline.from_pretrained(export, local_files_only=True).to(device)
    loaded = time.perf_counter()
    video = pipe(PROMPT, height=height, width=width, num_frames=frames, num_inference_steps=2,
                 output_type="np").frames[0]  # fmt: skip
    result = {"load_s": loaded - started, "generate_s": time.perf_counter() - loaded,
              "frames_shape": list(video.shape), "finite": bool(np.isfinite(video).all()),
              "transformer": type(pipe.transformer).__name__}  # fmt: skip
    print(json.dumps(result))
    if list(video.shape) != [frames, height, width, 3] or not result["finite"]:
        raise SystemExit(f"stock WanPipeline gave {video.shape}, finite={result['finite']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.wan_study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inputs", help="write the random-weight pipeline and the clips")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument(
        "--device", default=None, help="where the models are built (default: CUDA if any)"
    )
    p = sub.add_parser("run", help="the study and the commands after it")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--phases", nargs="+", choices=("sweep", "use", "lora"),
                   default=["sweep", "use"])  # fmt: skip
    p.add_argument("--set", action="append", default=[], help="one more sla-sweep --set")
    p = sub.add_parser("summarize", help="OUT/summary.json again from what a run left in OUT")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("stock", help="stock WanPipeline on an export")
    p.add_argument("export", type=Path)
    p.add_argument("--size", choices=tuple(CLIPS), default="full")
    args = parser.parse_args(argv)
    if args.command == "inputs":
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        work = args.work.absolute()
        size = "tiny" if args.tiny else "full"
        count, frames, hw = CLIPS[size]
        result = {
            "pipeline": write_pipeline(work / "pipeline", tiny=args.tiny, device=device),
            "clips": write_clips(work / "clips", count=count, frames=frames, size=hw),
        }
        (work / "inputs.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
    elif args.command == "run":
        run(args)
    elif args.command == "summarize":
        print(json.dumps(summarize(args.out), indent=1, default=str))
    else:
        stock(args.export, args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
