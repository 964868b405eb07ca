"""What the distill objective costs: generating a prompt file's latents, and a training step.

    python -m benchmarks.distill [--pipeline DIR] [--prompts 8] [--generate-steps 2 8]
                                 [--preset small] [--topk 0.25] [--reps 5] [--out results.json]

Without --pipeline a tiny random-weight Wan2.1-style pipeline is built (its sizes set the cost,
not its weights). Two parts:

- generation: the dense base generates --prompts latents into an empty cache (prepare_encoded,
  as a sweep's driver runs it) at each --generate-steps; seconds per prompt (the manifest's
  generate_s over the prompts), then one distill trial (LoRA, SLA, 2 steps) on those latents, as
  a sweep runs it, and the generation's share of a sweep of `--trials` such trials:
  generate / (generate + trials x trial).
- step: one optimizer step (loss, backward, AdamW) of a preset with SLA on the same batch, for a
  full fine-tune (distill: its frozen copy teaches) and for LoRA (distill: the same weights,
  adapter off and SLA bypassed, teach), each with flow matching and with distill; the median
  over --reps after one warm-up, the modes interleaved. CPU float32 here (no autocast).
"""

from __future__ import annotations

# Imports inside functions: torch, diffusers and the recipe load only for the part that runs,
# and the tiny inputs come from the models package and tests/ only without --pipeline.
import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = ("a red square moving right", "a blue circle bouncing", "a green line turning",
           "a yellow dot fading", "a white star spinning", "a black cat walking",
           "waves on a beach", "a car on a road at night")  # fmt: skip


def _config(pipeline: Path, prompts: Path, cache: Path, gen_steps: int):
    from orchestrator.recipe import TrainConfig

    return TrainConfig.from_dict({
        "model": str(pipeline), "objective": "distill", "lora": {"rank": 4}, "steps": 2,
        "batch_size": 2, "log_every": 1, "sample_steps": 2, "warmup_steps": 1,
        "data": {"source": str(prompts), "frames": 9, "size": 32, "num_val": 1,
                 "cache_dir": str(cache), "generate_steps": gen_steps},
    })  # fmt: skip


def generation(pipeline: Path, count: int, steps_list: list[int], trials: int, tmp: Path):
    """Per --generate-steps value: seconds per prompt, a trial's seconds, the share of a sweep."""
    from orchestrator.recipe import RecordingCallback, run_trial
    from orchestrator.recipe.pipeline_data import prepare_encoded
    from sla_kernel_glue import SLAConfig

    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join((PROMPTS * (count // len(PROMPTS) + 1))[:count]) + "\n")
    out = []
    for steps in steps_list:
        config = _config(pipeline, prompts, tmp / f"cache{steps}", steps)
        cpu = time.process_time()
        manifest = prepare_encoded(config, log=lambda _m: None)
        gen_cpu = time.process_time() - cpu
        stats = json.loads(manifest.read_text())["stats"]
        started, cpu = time.perf_counter(), time.process_time()
        run_trial(config, SLAConfig(topk=0.5, blkq=16, blkk=16), tmp / f"trial{steps}",
                  encoded=manifest, callback=RecordingCallback())  # fmt: skip
        trial_s, trial_cpu = time.perf_counter() - started, time.process_time() - cpu
        gen = stats["generate_s"]
        out.append({"generate_steps": steps, "prompts": count, "generate_s": gen,
                    "per_prompt_s": gen / count, "trial_s": trial_s,
                    "per_prompt_cpu_s": gen_cpu / count, "trial_cpu_s": trial_cpu,
                    "share_of_sweep": gen / (gen + trials * trial_s),
                    "share_of_sweep_cpu": gen_cpu / (gen_cpu + trials * trial_cpu),
                    "trials": trials})  # fmt: skip
    return out


MODES = ("flow_matching", "distill_copy", "flow_matching_lora", "distill_lora")


def _step_fn(preset: str, topk: float, mode: str):
    """One optimizer step of `mode` (MODES: a full fine-tune, or LoRA rank 16 over the frozen
    base, each with either objective) as a closure."""
    import torch

    from orchestrator.models.wan_presets import PRESETS, build_preset
    from orchestrator.recipe.config import LoraConfig
    from orchestrator.recipe.distill import Teacher, objective_loss
    from orchestrator.recipe.lora import add_lora
    from sla_kernel_glue import SLAConfig, apply_sla

    p = PRESETS[preset]
    model = build_preset(preset, seed=0).train()
    teacher = None
    if mode == "distill_copy":  # before SLA goes in, as the recipe makes it
        teacher = Teacher.copy_of(model, torch.float32, contextlib.nullcontext)
    lora = mode.endswith("_lora")
    if lora:
        add_lora(model, LoraConfig(rank=16))
    handle = apply_sla(model, SLAConfig(topk=topk, blkq=32, blkk=32))
    if mode == "distill_lora":
        teacher = Teacher(own=lambda: model, handle=lambda: handle)
    if lora:
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name or ".sla." in name)
    g = torch.Generator().manual_seed(0)
    shape = (2, p.in_channels, p.frames, p.size, p.size)
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t, context = torch.rand(2, generator=g), torch.randn(2, p.text_len, p.text_dim, generator=g)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)

    def step() -> None:
        loss = objective_loss(model, x0, noise, t, context, teacher=teacher)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_times(preset: str, topk: float, reps: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU (process) seconds of one step per mode, the modes interleaved rep by
    rep (a shared machine's load then falls on each alike; CPU time is what the load moves
    least)."""
    steps = {mode: _step_fn(preset, topk, mode) for mode in MODES}
    wall: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    for mode in MODES:
        steps[mode]()  # warm-up
    for _ in range(reps):
        for mode in MODES:
            started, used = time.perf_counter(), time.process_time()
            steps[mode]()
            wall[mode].append(time.perf_counter() - started)
            cpu[mode].append(time.process_time() - used)
    return {mode: {"wall_s": statistics.median(wall[mode]), "cpu_s": statistics.median(cpu[mode])}
            for mode in MODES}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument(
        "--generate-steps",
        type=int,
        nargs="*",
        default=[2, 8],
        help="none: skip the generation part",
    )
    parser.add_argument("--trials", type=int, default=2, help="trials of the sweep (share)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--topk", type=float, default=0.25)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if args.pipeline is None and args.generate_steps:
            from orchestrator.models.tiny_pipeline import build_tiny_pipeline

            args.pipeline = build_tiny_pipeline(tmp / "pipeline")
        gen = generation(args.pipeline, args.prompts, args.generate_steps, args.trials, tmp)
    steps = step_times(args.preset, args.topk, args.reps)
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "load_average": os.getloadavg()},
              "generation": gen, "step_s": {"preset": args.preset, "topk": args.topk, **steps}}  # fmt: skip
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
