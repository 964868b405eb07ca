"""Training-step time of a Wan preset with dense attention against SLA, and attention's share.

    python -m benchmarks.train_step --preset wan-1.3b --layers 10 --topk 0.05 0.1 0.2 --out step.json
    python -m benchmarks.train_step --preset tiny --steps 2          # CPU smoke run
    python -m benchmarks.train_step --preset wan-1.3b-6l --compile --profile prof/   # GPU
    python -m benchmarks.train_step --preset wan-1.3b-6l --inference --compile        # sampling

--compile compiles each transformer block with torch.compile (orchestrator.recipe.compile), for
dense and SLA alike; --profile writes, per config, a table of the step's kernels by device
time (torch.profiler over one step after the timed ones). --inference times one denoising
forward pass under no_grad instead (what each sampling step of `sla-sweep infer` costs), and
attention forward only.

One training step = flow-matching loss, backward, AdamW step, under bf16 autocast on CUDA (fp32 on
the CPU). Every config starts from the same weights and batch. Attention's share of a step is
measured, not assumed: the same model's self-attention layers times one attention call
(forward+backward on the step's q, k, v shapes: torch SDPA for dense, SparseLinearAttention for
SLA) over the step time. Not on the training path: a script beside the recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from orchestrator.models.wan_presets import PRESETS
from orchestrator.recipe.compile import compiled_blocks
from orchestrator.recipe.flow_matching import class_prompts, flow_loss, predict_velocity
from sla_kernel_glue import SLAConfig, SparseLinearAttention, apply_sla, attention_flops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, *, warmup: int, reps: int) -> float:
    """Median seconds of fn() over reps after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_model(preset: str, layers: int | None, device: torch.device):
    from diffusers import WanTransformer3DModel

    config = PRESETS[preset].transformer_config()
    if layers is not None:
        config["num_layers"] = layers
    torch.manual_seed(0)
    return WanTransformer3DModel(**config).to(device), config


def step_time(
    model,
    batch,
    context,
    device,
    *,
    steps: int,
    autocast: bool,
    inference: bool = False,
    profile: Path | None = None,
) -> float:
    """Median seconds of a training step (or, inference, of one denoising forward pass)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x0, noise, t = batch

    def one_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = flow_loss(model, x0, noise, t, context)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def one_forward() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            predict_velocity(model, noise, t, context)

    timed = one_forward if inference else one_step
    seconds = _timed(timed, device, warmup=1, reps=steps)
    if profile is not None:
        write_profile(timed, device, profile)
    return seconds


def write_profile(fn, device: torch.device, path: Path) -> None:
    """One call of fn under torch.profiler: its ops by self device time (CPU time without CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90))


def attention_time(
    config: dict,
    sla: SLAConfig | None,
    tokens: int,
    batch: int,
    device,
    *,
    autocast: bool,
    backward: bool = True,
) -> float:
    """Seconds of one self-attention call at the step's shapes: forward+backward, or forward
    only under no_grad (backward=False)."""
    heads, d = config["num_attention_heads"], config["attention_head_dim"]
    dtype = torch.bfloat16 if autocast else torch.float32
    q, k, v = (
        torch.randn(batch, heads, tokens, d, device=device, dtype=dtype, requires_grad=backward)
        for _ in range(3)
    )
    grad = torch.randn_like(q)
    if sla is None:
        fn = torch.nn.functional.scaled_dot_product_attention
    else:
        fn = SparseLinearAttention(d, sla).to(device)

    def call() -> None:
        if not backward:
            with torch.no_grad():
                fn(q, k, v)
            return
        out = fn(q, k, v)
        out.backward(grad)

    return _timed(call, device, warmup=1, reps=3)


def time_config(model, config, sla, batch, context, device, args, *, tokens: int) -> dict:
    """One config's training step (or forward) and its attention calls alone, on `model` as loaded."""
    autocast = device.type == "cuda"
    layers = config["num_layers"]
    handle = apply_sla(model, sla) if sla is not None else None
    name = "dense" if sla is None else f"topk {sla.topk} {sla.linear_scope}"
    profile = None if args.profile is None else args.profile / (name.replace(" ", "_") + ".txt")
    if args.compile:
        torch._dynamo.reset()  # each config compiles its own graphs
    try:
        with compiled_blocks(model) if args.compile else contextlib.nullcontext():
            step_s = step_time(
                model,
                batch,
                context,
                device,
                steps=args.steps,
                autocast=autocast,
                inference=args.inference,
                profile=profile,
            )
        calls = handle.sla_calls() if handle is not None else 0
    finally:
        if handle is not None:
            handle.remove()
    attn_s = attention_time(
        config, sla, tokens, args.batch, device, autocast=autocast, backward=not args.inference
    )
    flops = attention_flops(
        args.batch,
        config["num_attention_heads"],
        tokens,
        config["attention_head_dim"],
        sla,
        backward=not args.inference,
    )
    row = {
        "config": name,
        "sla": None if sla is None else sla.to_dict(),
        "step_s": step_s,
        "attention_s_per_step": attn_s * layers,
        "attention_share": attn_s * layers / step_s,
        "attention_flops_ratio": flops.ratio,
        "sla_calls": calls,
    }
    return row


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--topk", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument(
        "--sla", default="{}", help="other SLA settings, e.g. \"{'linear_scope': 'all'}\""
    )
    p.add_argument("--extra", nargs="*", default=[], metavar="SLA",
                   help="more SLA configs to time, each over --sla, e.g. \"{'topk': 0.05, 'linear_scope': 'none'}\"")  # fmt: skip
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--steps", type=int, default=3, help="timed steps per config (after one warm-up)"
    )
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every transformer block (dense and SLA alike)")  # fmt: skip
    p.add_argument("--inference", action="store_true",
                   help="time one denoising forward pass under no_grad instead of a training step")  # fmt: skip
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="write each config's profiled step (ops by device time) into DIR")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        base_sla = SLAConfig.parse(args.sla)
        configs = [None] + [base_sla.replace(topk=t) for t in args.topk]
        configs += [SLAConfig.parse(extra, over=base_sla) for extra in args.extra]
    except ValueError as exc:
        print(f"benchmarks.train_step: error: {exc}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset]
    model, config = build_model(args.preset, args.layers, device)
    shape = (args.batch, config["in_channels"], preset.frames, preset.size, preset.size)
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(shape, generator=g).to(device),
        torch.randn(shape, generator=g).to(device),
        torch.rand(args.batch, generator=g).to(device),
    )
    context = class_prompts(preset.text_len, config["text_dim"])[: args.batch].to(device)
    tokens = preset.frames * (preset.size // 2) ** 2
    layers = config["num_layers"]
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"{gpu}: preset {args.preset}, {layers} layers, {tokens} tokens, batch {args.batch}",
        flush=True,
    )
    rows = []
    for sla in configs:
        model.load_state_dict(initial)
        row = time_config(model, config, sla, batch, context, device, args, tokens=tokens)
        rows.append(row)
        print(json.dumps(row), flush=True)
    dense = rows[0]["step_s"]
    for row in rows:
        row["speedup_vs_dense"] = dense / row["step_s"]
        print(
            f"{row['config']:>10}: {'forward' if args.inference else 'step'} {row['step_s'] * 1e3:9.1f} ms  x{row['speedup_vs_dense']:.2f} vs dense  attention share {row['attention_share']:.0%}"
        )
    result = {
        "device": gpu,
        "preset": args.preset,
        "layers": layers,
        "tokens": tokens,
        "batch": args.batch,
        "compile": args.compile,
        "mode": "inference" if args.inference else "training",
        "rows": rows,
        "torch": torch.__version__,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
