"""OUT/summary.json of benchmarks.wan_study from what a run left in OUT (also a run cut short):
each command's wall time, the GPU's busy share per command, the sweep's timings and each config's
perf/* metrics, the projection of a trial's fixed costs onto a 1000-step trial, the LoRA sweep's
trial spans and infer's seconds per video."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any

import yaml

from benchmarks.gpu_sampler import busy_share, read_samples
from benchmarks.wan_study_inputs import EXPERIMENT, MEASURED_VALIDATION_STEPS


def write_json(path: Path, value: Any) -> None:
    """value as JSON into path, by a rename (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)


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
    write_json(out / "summary.json", summary)
    return summary


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
