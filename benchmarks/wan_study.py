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
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "wan2.1-t2v-1.3b.yaml"
PROMPT = "A cat walks on the grass, realistic style."
CAPTIONS = (
    "a red ball rolls across a green field under a blue sky",
    "a yellow square slides over a purple gradient at dusk",
    "two circles orbit each other above a calm grey sea",
    "a white bar sweeps from left to right across a dark room",
    "colourful blobs drift slowly over a bright orange wall",
    "a small blue square bounces between the edges of the frame",
)

MEASURED_VALIDATION_STEPS = 10  # the device run's validation.steps (the experiment ships 30)
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
CLIPS = {"full": (6, 81, (480, 832)), "tiny": (4, 9, (32, 48))}  # count, frames, (H, W)


# ---- inputs ------------------------------------------------------------------------------------
def write_pipeline(out: Path, *, tiny: bool, device: str) -> dict[str, Any]:
    """The random-weight pipeline of Wan2.1-T2V-1.3B's configs (or the tiny shape) into out."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    from benchmarks.full_shape_models import FULL, TINY
    from orchestrator.models.tiny_pipeline import build_tokenizer

    shape = TINY if tiny else FULL
    started = time.perf_counter()
    tokenizer = build_tokenizer(max_length=shape.text_len)
    text_config = {**shape.text_encoder, "decoder_start_token_id": 0}
    text_config["vocab_size"] = max(text_config["vocab_size"], len(tokenizer))
    with torch.device(device):
        torch.manual_seed(0)
        transformer = WanTransformer3DModel(**shape.transformer)
        vae = AutoencoderKLWan(**shape.vae)
        text_encoder = UMT5EncoderModel(UMT5Config(**text_config)).to(torch.bfloat16)
    scheduler = UniPCMultistepScheduler(  # Wan2.1-T2V-1.3B-Diffusers' scheduler/config.json
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=3.0, solver_order=2, solver_type="bh2", lower_order_final=True,
    )  # fmt: skip
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                       scheduler=scheduler, transformer=transformer)  # fmt: skip
    built = time.perf_counter()
    _write_new(out, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
    return {"build_s": built - started, "save_s": time.perf_counter() - built,
            "bytes": _tree_bytes(out), "device": device}  # fmt: skip


def clip_frames(index: int, frames: int, height: int, width: int) -> np.ndarray:
    """uint8 (frames, H, W, 3): a drifting colour gradient with a moving disc and a bar."""
    rng = np.random.default_rng(index)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    colours = rng.uniform(0.15, 0.85, size=(3, 3)).astype(np.float32)
    cy, cx, vy, vx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), *rng.uniform(-0.01, 0.01, 2)
    radius = rng.uniform(0.06, 0.15)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        phase = f / max(frames - 1, 1)
        base = (0.5 + 0.5 * np.sin(2 * np.pi * (x + y * 0.5 + phase)))[..., None]
        image = colours[0] * base + colours[1] * (1 - base)
        py, px = (cy + vy * f) % 1.0, (cx + vx * f) % 1.0
        disc = ((y - py) ** 2 + ((x - px) * width / height) ** 2) < radius**2
        image[disc] = colours[2]
        bar = np.abs(x - phase) < 0.02
        image[np.broadcast_to(bar, (height, width))] = 1.0
        out[f] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return out


def write_clips(out: Path, *, count: int, frames: int, size: tuple[int, int]) -> dict[str, Any]:
    """count captioned MP4 clips (frames + 8 frames at 16 fps, H x W) into out."""
    from orchestrator.data.video_writers import write_captions, write_video

    started = time.perf_counter()

    def write(tmp: Path) -> None:
        for i in range(count):
            write_video(tmp / f"clip_{i:03d}.mp4", clip_frames(i, frames + 8, *size), fps=16)
        names = [f"clip_{i:03d}.mp4" for i in range(count)]
        captions = {name: CAPTIONS[i % len(CAPTIONS)] for i, name in enumerate(names)}
        write_captions(tmp, captions, sidecar=names[::2])  # sidecars and metadata.jsonl rows

    _write_new(out, write)
    return {"count": count, "frames": frames + 8, "size": list(size), "fps": 16,
            "seconds": time.perf_counter() - started, "bytes": _tree_bytes(out)}  # fmt: skip


def _write_new(out: Path, write) -> None:
    """Run write(tmp) on a temporary folder beside out, then rename it to out (new or complete)."""
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another --work")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---- the GPU sampler ---------------------------------------------------------------------------
class GpuSampler:
    """nvidia-smi's utilization.gpu and memory.used every second into a CSV (unix time first);
    nothing where there is no nvidia-smi."""

    QUERY = "timestamp,utilization.gpu,memory.used"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") is None:
            return self
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits",
             "-lms", "1000"], stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()
        return self

    def _drain(self) -> None:
        with self.path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["unix_s", "util_pct", "mem_mib"])
            for line in self.proc.stdout:
                parts = [p.strip() for p in line.split(",")]
                with contextlib.suppress(ValueError, IndexError):
                    out.writerow([f"{time.time():.3f}", float(parts[1]), float(parts[2])])
                    f.flush()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.thread.join(10)


def read_samples(path: Path) -> list[tuple[float, float, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [(float(r["unix_s"]), float(r["util_pct"]), float(r["mem_mib"]))
                for r in csv.DictReader(f)]  # fmt: skip


def busy_share(samples: list[tuple[float, float, float]], start: float, end: float) -> dict:
    """The mean utilization.gpu (the share of each second a kernel ran) over [start, end)."""
    inside = [s for s in samples if start <= s[0] < end]
    if not inside:
        return {"samples": 0}
    return {"samples": len(inside), "busy_share": sum(s[1] for s in inside) / 100 / len(inside),
            "peak_mem_mib": max(s[2] for s in inside), "seconds": end - start}  # fmt: skip


# ---- run ---------------------------------------------------------------------------------------
def run_command(name: str, argv: list[str], out: Path, marks: dict) -> float:
    """Run argv with its output (each line stamped with the unix time) in OUT/<name>.log, its start
    and end in OUT/marks.json; returns the wall seconds; raises on a non-zero exit."""
    started = time.time()
    marks[name] = {"start": started, "argv": argv}
    _write_json(out / "marks.json", marks)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (out / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=ROOT, env=env)  # fmt: skip
        for line in proc.stdout:
            log.write(f"{time.time():.3f} {line}")
            log.flush()
        code = proc.wait()
    marks[name].update(end=time.time(), rc=code)
    _write_json(out / "marks.json", marks)
    print(f"[wan_study] {name}: exit {code} in {time.time() - started:.1f} s", flush=True)
    if code != 0:
        raise RuntimeError(f"{name} exited {code}; see {out / (name + '.log')}")
    return time.time() - started


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)


def sweep_dir(runs: Path, name: str = "wan-study") -> Path:
    found = sorted(p for p in runs.glob(f"{name}-*") if p.is_dir())
    if not found:
        raise RuntimeError(f"no sweep directory under {runs}")
    return found[-1]


def config_metrics(summary_csv: Path) -> dict[str, dict[str, float]]:
    """Each config's mean of every perf/, val/, flops/, train/ and sla/ metric, from the sweep
    report's summary.csv (report/summary.csv of the sweep directory)."""
    out: dict[str, dict[str, float]] = {}
    with summary_csv.open() as f:
        for row in csv.DictReader(f):
            if row["metric"].split("/")[0] in ("perf", "val", "flops", "train", "sla"):
                out.setdefault(row["config"], {})[row["metric"]] = float(row["mean"])
    return out


def first_step_extra(sweep_log: Path, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per config, the seconds its first training step took beyond the steady step time
    (perf/step_s): torch.compile's compilation and the first call's set-up. From the stamped
    lines "trial T started: ... topk=X" / "control", "trial T step 0" and "trial T step 1"."""
    config, stamps = {}, {}
    for line in sweep_log.read_text().splitlines():
        stamp, _, text = line.partition(" ")
        words = text.split()
        if len(words) < 4 or words[0] != "[sla-sweep]" or words[1] != "trial":
            continue
        trial = words[2]
        if words[3] == "started:":
            topk = [w for w in words if w.startswith("topk=")]
            config[trial] = "control" if "control" in text else (topk[0] if topk else text)
        elif words[3] == "step" and words[4] in ("0", "1"):
            stamps[(trial, words[4])] = float(stamp)
    out = {}
    for trial, name in config.items():
        if (
            (trial, "0") in stamps
            and (trial, "1") in stamps
            and "perf/step_s" in metrics.get(name, {})
        ):
            first = stamps[(trial, "1")] - stamps[(trial, "0")]
            out[name] = max(first - metrics[name]["perf/step_s"], 0.0)
    return out


def project(timings: dict, metrics: dict[str, dict[str, float]], *, steps: int = 1000,
            validation_steps_ratio: float = 1.0, checkpoints: int = 1,
            compile_s: dict[str, float] | None = None) -> dict:  # fmt: skip
    """A trial's fixed costs next to `steps` training steps at each config's measured step time:
    Ray's start-up, the recipe's set-up (model load, first evaluation), the first step's extra
    (compilation), `checkpoints` checkpoint saves, one validation (generation scaled by
    validation_steps_ratio, plus the decode) and Ray's teardown."""
    out = {}
    for config, m in metrics.items():
        if "perf/step_s" not in m:
            continue
        fixed = {
            "ray_start_s": timings.get("trial_ray_start_s", 0.0),
            "setup_s": timings.get("trial_recipe_setup_s", 0.0),
            "first_step_extra_s": (compile_s or {}).get(config, 0.0),
            "validation_s": m.get("perf/validation_generate_s", 0.0) * validation_steps_ratio
            + m.get("perf/decode_s", 0.0),
            "checkpoint_s": m.get("perf/checkpoint_s", 0.0) * checkpoints,
            "ray_teardown_s": timings.get("trial_ray_teardown_s", 0.0),
        }
        training = steps * m["perf/step_s"]
        total = sum(fixed.values()) + training
        out[config] = {**fixed, "training_s": training, "fixed_share": sum(fixed.values()) / total}
    return out


def summarize(out: Path) -> dict[str, Any]:
    """OUT/summary.json from what a run left in OUT (also a run cut short): marks.json, gpu.csv,
    the sweep's timings.json and report/summary.csv, infer's videos-<attention>.json."""
    marks = json.loads((out / "marks.json").read_text()) if (out / "marks.json").is_file() else {}
    summary: dict[str, Any] = {"commands": {
        name: {"seconds": m["end"] - m["start"], "rc": m["rc"]} if "end" in m else "cut short"
        for name, m in marks.items()
    }}  # fmt: skip
    samples = read_samples(out / "gpu.csv")
    summary["gpu"] = {name: busy_share(samples, m["start"], m.get("end", samples[-1][0] + 1))
                      for name, m in marks.items() if samples}  # fmt: skip
    if (out / "timings.json").is_file():
        timings = summary["sweep_timings"] = json.loads((out / "timings.json").read_text())
        with contextlib.suppress(StopIteration, KeyError):
            log = (out / "sweep.log").read_text().splitlines()
            printed = float(next(ln for ln in log if "[sla-sweep] time:" in ln).split(" ", 1)[0])
            t0 = printed - timings["total_s"]  # when the sweep's run() began
            encoded = t0 + timings["base_model_s"] + timings["encode_s"]
            summary["gpu"]["sweep_encode"] = busy_share(samples, t0, encoded)
            summary["gpu"]["sweep_after_encode"] = busy_share(
                samples, encoded, marks["sweep"]["end"]
            )
    if (out / "summary.csv").is_file():
        metrics = summary["configs"] = config_metrics(out / "summary.csv")
        timings = summary.get("sweep_timings", {})
        extra = {}
        if (out / "sweep.log").is_file():
            extra = summary["first_step_extra_s"] = first_step_extra(out / "sweep.log", metrics)
        summary["projected_1000_steps"] = project(timings, metrics, compile_s=extra)
        shipped = yaml.safe_load(EXPERIMENT.read_text())  # 30 validation steps, 2 checkpoints
        measured_steps = int(summary.get("validation_steps") or MEASURED_VALIDATION_STEPS)
        summary["projected_1000_steps_as_shipped"] = project(
            timings,
            metrics,
            validation_steps_ratio=shipped["validation"]["steps"] / measured_steps,
            checkpoints=1000 // shipped["train"]["checkpoint_every"],
            compile_s=extra,
        )
    if (out / "sweep_lora.log").is_file():  # also a LoRA sweep cut short: its stamped lines
        spans = trial_spans(out / "sweep_lora.log")
        together = min((e for _, e in spans.values()), default=0.0) - max(
            (s for s, _ in spans.values()), default=0.0
        )
        summary["lora"] = {
            "trial_spans": spans,
            "trials_ran_together_s": max(together, 0.0) if len(spans) > 1 else 0.0,
        }
        if (out / "lora-summary.csv").is_file():
            summary["lora"]["configs"] = config_metrics(out / "lora-summary.csv")
    for attention in ("sla", "dense"):
        path = out / f"videos-{attention}.json"
        if path.is_file():
            videos = json.loads(path.read_text())
            summary[f"infer_{attention}"] = {
                **videos["seconds"], "precision": videos.get("precision"),
                "compile": videos["compile"], "generation": videos["generation"],
            }  # fmt: skip
    _write_json(out / "summary.json", summary)
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = "tiny" if args.tiny else "full"
    work, out = args.work.absolute(), args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    runs, marks = work / "runs", {}
    _write_json(out / "host.json", _host())
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


def trial_spans(sweep_log: Path) -> dict[str, tuple[float, float]]:
    """Each trial's first and last stamped "[sla-sweep] trial T ..." line."""
    spans: dict[str, tuple[float, float]] = {}
    for line in sweep_log.read_text().splitlines():
        stamp, _, text = line.partition(" ")
        words = text.split()
        if len(words) >= 3 and words[:2] == ["[sla-sweep]", "trial"]:
            first = spans.get(words[2], (float(stamp), 0.0))[0]
            spans[words[2]] = (first, float(stamp))
    return spans


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
