"""`sla-sweep compare SWEEP_DIR`: every finished trial against the full-attention control.

    sla-sweep compare sla_runs/topk-20261129-101500 [--num-samples 4] [--seed 0] [--device auto] [--compile]

Loads each trial's latest checkpoint (SLA trials with SLA on, the control dense), samples the same
noise and prompts from every one of them, and reports per trial:

- val/loss and its gap to the control's val/loss (the sweep's own records, same step count);
- PSNR (dB) of the trial's samples against the control's samples from the same noise;
- generation time and the inference speed-up over the control (SLA against dense attention on
  the same model size). The first call of each model is a warm-up (Triton compiles and autotunes
  there) and is not timed; CUDA is synchronised around the timed call. With --compile every
  model's transformer blocks are torch.compiled (SLA's attention call stays eager) and the
  warm-up is the whole timed workload, so that no compilation lands in the timing.

Writes <sweep>/compare.json (or --out) and prints a table. Needs a finished control trial.

The CLI imports this module to build its parser, so torch and the modules that load torch or
diffusers are imported inside the functions that run a model (heavy: every start would load them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.infer.errors import InferenceError
from orchestrator.infer.options import add_device, pick_device, positive_int
from orchestrator.spec import SpecError
from orchestrator.storage.records import FINISHED, SWEEP_FILE, TrialRow, load_rows
from orchestrator.storage.sweep_place import open_place

if TYPE_CHECKING:
    import torch


def compare_sweep(
    sweep_dir: Path,
    *,
    num_samples: int = 4,
    seed: int = 0,
    device: str = "auto",
    compile: bool = False,
) -> dict[str, Any]:
    """Generate from every finished trial of the sweep and compare it with the control."""
    import torch  # heavy (see the module docstring)

    sweep_dir = Path(sweep_dir).resolve()
    ordered = _control_first(sweep_dir)
    dev = pick_device(device)
    results, clips_by_trial = [], {}
    for row in ordered:
        result, clips = _generate_trial(
            sweep_dir, row, num_samples=num_samples, seed=seed, device=dev, compile=compile
        )
        results.append(result)
        clips_by_trial[row.trial_id] = clips
    _against_control(results, clips_by_trial)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return {"sweep": str(sweep_dir), "device": gpu, "num_samples": num_samples, "seed": seed,
            "compile": compile, "trials": results}  # fmt: skip


def _control_first(sweep_dir: Path) -> list[TrialRow]:
    """The sweep's finished trials with a checkpoint: its first control, then every SLA trial."""
    if not (sweep_dir / SWEEP_FILE).is_file():
        raise InferenceError(f"{sweep_dir} is not a sweep directory (no sweep.json)")
    rows = [r for r in load_rows(sweep_dir).values() if r.status == FINISHED and r.checkpoint]
    controls = [r for r in rows if r.sla is None]
    if not controls:
        raise InferenceError(
            f"sweep {sweep_dir} has no finished full-attention control trial to compare against "
            "(run it with control: true)"
        )
    return controls[:1] + [r for r in rows if r.sla is not None]


def _generate_trial(
    sweep_dir: Path,
    row: TrialRow,
    *,
    num_samples: int,
    seed: int,
    device: torch.device,
    compile: bool,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One trial's result (generation timed after a warm-up) and its clips."""
    import torch  # heavy (see the module docstring)

    from orchestrator.infer.model import load_checkpoint_model  # heavy: torch and diffusers
    from orchestrator.infer.samples import generate, sample_inputs  # heavy: torch
    from orchestrator.infer.target import from_sweep  # heavy: loads infer.model
    from orchestrator.recipe.compile import compiled_blocks  # heavy: torch

    target = from_sweep(sweep_dir, row.trial_id)
    attention = "dense" if row.sla is None else "sla"
    loaded = load_checkpoint_model(target.directory, attention=attention, device=device)
    noise, labels = sample_inputs(loaded.settings, num_samples=num_samples, seed=seed)
    with compiled_blocks(loaded.model) if compile else contextlib.nullcontext():
        # warm-up: compiled, every batch shape of the timed call; eager, one clip will do
        warm = num_samples if compile else 1
        generate(loaded.model, loaded.settings, noise[:warm], labels[:warm], device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        clips = generate(loaded.model, loaded.settings, noise, labels, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    result = {
        "trial": row.trial_id,
        "sla": row.sla,
        "train": row.train,  # the searched training settings, by dotted key
        "step": loaded.source["step"],
        "val/loss": row.metrics.get("val/loss"),
        "generate_s": seconds,
        "sla_calls": loaded.handle.sla_calls() if loaded.handle is not None else 0,
    }
    print(f"compare: {row.trial_id} ({'control' if row.sla is None else 'SLA'}) "
          f"generated {num_samples} clips in {seconds:.2f} s", flush=True)  # fmt: skip
    del loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result, clips


def _against_control(results: list[dict[str, Any]], clips_by_trial: dict[str, Any]) -> None:
    """Each result's PSNR, val/loss gap and speed-up against the control's (results[0])."""
    from orchestrator.recipe.evaluate import psnr  # heavy: torch

    control = results[0]
    ref = clips_by_trial[control["trial"]]
    for r in results:
        r["psnr_vs_control_db"] = (
            psnr(clips_by_trial[r["trial"]], ref) if r is not control else None
        )
        loss, ctrl = r["val/loss"], control["val/loss"]
        r["val_loss_gap_vs_control"] = None if loss is None or ctrl is None else loss - ctrl
        r["speedup_vs_control"] = control["generate_s"] / r["generate_s"]


def format_comparison(result: dict[str, Any]) -> str:
    """A plain-text table of compare_sweep's result; trials are named by the settings that vary."""
    settings = [_settings(r) for r in result["trials"] if r["sla"] is not None]
    names = dict.fromkeys(k for s in settings for k in s)  # every key, in first-seen order
    keys = [k for k in names if len({repr(s.get(k)) for s in settings}) > 1]
    lines = [
        f"{'trial':<36} {'val/loss':>9} {'gap':>9} {'PSNR dB':>8} {'gen s':>8} {'speed-up':>9}"
    ]
    for r in result["trials"]:
        if r["sla"] is None:
            label = "control (full attention)"
        else:
            chosen = _settings(r)
            label = " ".join(f"{k}={chosen[k]}" for k in keys if k in chosen) or r["trial"]
        lines.append(
            f"{label[:36]:<36} {_num(r['val/loss']):>9} {_num(r['val_loss_gap_vs_control'], '+.4f'):>9} "
            f"{_num(r['psnr_vs_control_db'], '.1f'):>8} {r['generate_s']:>8.2f} {r['speedup_vs_control']:>8.2f}x"
        )
    return "\n".join(lines)


def _settings(trial: dict[str, Any]) -> dict[str, Any]:
    """A result's SLA fields and searched training settings ("train.lr"), as TrialRow.settings."""
    return {**trial["sla"], **{f"train.{k}": v for k, v in (trial.get("train") or {}).items()}}


def _num(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


# ---- the `sla-sweep compare` subcommand ----------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `sla-sweep compare`."""
    p.add_argument("sweep_dir", help="a sweep directory (holds sweep.json), or its URI (s3://...)")
    p.add_argument(
        "--num-samples", type=positive_int, default=4, help="clips per trial (default 4)"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed, the same for every trial")
    add_device(p)
    p.add_argument("--out", type=Path, help="where the JSON goes (default: SWEEP_DIR/compare.json)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model's transformer blocks (dense and SLA alike)")  # fmt: skip


def handle(args: argparse.Namespace) -> int:
    """Compare every finished trial's samples, loss and generation time with the control."""
    try:
        result = compare_sweep(
            open_place(args.sweep_dir).local, num_samples=args.num_samples, seed=args.seed, device=args.device,
            compile=args.compile,
        )  # fmt: skip
    except (ValueError, OSError, SpecError) as exc:  # InferenceError, bad files: one line
        print(f"sla-sweep compare: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(result["sweep"]) / "compare.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(format_comparison(result))
    print(f"compare: {out}")
    return 0
