"""The training phases of benchmarks.full_shape: one training step of Wan2.1-T2V-1.3B's
transformer (flow-matching loss under bf16 autocast, backward, gradient clipping at 1.0, AdamW),
dense vs SLA, full fine-tune vs LoRA, eager or with every block compiled; gradient checkpointing
only where the step does not fit without it."""

from __future__ import annotations

# Imports inside functions: the recipe (diffusers, accelerate) loads only in the training phase.
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.full_shape_models import (
    GIB,
    Shape,
    _fresh,
    _memory,
    _timed,
    build_transformer,
    make_batch,
    prepare_model,
    sla_config,
)


def _train_step(model, optimizer, params, batch, device: torch.device) -> Callable[[], None]:
    """One step of the recipe's loop: loss under autocast, backward, clip at 1.0, AdamW."""
    from orchestrator.recipe.flow_matching import flow_loss

    x0, noise, t, context = batch

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = flow_loss(model, x0, noise, t, context)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _steps_or_oom(model, params, batch, device, args) -> tuple[dict | None, Any]:
    """The timed steps with a fresh AdamW; None when the GPU ran out of memory."""
    optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
    try:
        step = _train_step(model, optimizer, params, batch, device)
        return _timed(step, device, warmup=1, reps=args.steps), optimizer
    except torch.cuda.OutOfMemoryError:
        pass  # out of the except block, so the traceback's frames let go of the activations
    optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    del optimizer
    return None, None


def train_config(shape: Shape, device, args, *, mode: str, sla, compile: bool, ckpt: str) -> dict:
    """One (mode, attention) training step: median seconds and peak memory. ckpt: gradient
    checkpointing "on", "off", or "auto" (on only if the step runs out of memory without)."""
    from orchestrator.recipe.compile import compiled_blocks

    _fresh(device)
    if compile:
        torch._dynamo.reset()  # each config compiles its own graphs
    model = build_transformer(shape, device).train()
    handle = prepare_model(model, shape, mode=mode, sla=sla)
    params = [p for p in model.parameters() if p.requires_grad]
    batch = make_batch(shape, device)
    row: dict[str, Any] = {"mode": mode, "attention": "dense" if sla is None else "sla",
                           "sla": None if sla is None else sla.to_dict(), "compile": compile,
                           "trainable_params": sum(p.numel() for p in params),
                           "weights_gib": _memory(device)["allocated_gib"]}  # fmt: skip
    checkpointing = ckpt == "on"
    optimizer = None
    try:
        with compiled_blocks(model) if compile else contextlib.nullcontext():
            times = None
            if not checkpointing:
                times, optimizer = _steps_or_oom(model, params, batch, device, args)
                row["oom_without_checkpointing"] = times is None
                checkpointing = times is None and ckpt == "auto"
            if checkpointing:
                _fresh(device)
                model.enable_gradient_checkpointing()
                if handle is not None:
                    handle.reset_counts()
                times, optimizer = _steps_or_oom(model, params, batch, device, args)
        row["gradient_checkpointing"] = checkpointing
        row.update(_memory(device))
        if times is None:
            row["error"] = "out of GPU memory"
        else:
            row.update(times, state_gib=_state_gib(optimizer))
        if handle is not None:
            calls = args.steps + 1  # the warm-up step counts too
            row["sla_calls_per_step"] = handle.sla_calls() / calls
            row["dense_calls_per_step"] = handle.total_fallbacks() / calls
            row["fallback_reasons"] = _reasons(handle.fallback_counts())
    finally:
        if handle is not None:
            handle.remove()
    return row


def _state_gib(optimizer) -> float | None:
    if optimizer is None:
        return None
    values = (v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return sum(v.numel() * v.element_size() for v in values) / GIB


def _reasons(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """Dense calls summed over layers, by reason."""
    out: dict[str, int] = {}
    for reasons in counts.values():
        for reason, n in reasons.items():
            out[reason] = out.get(reason, 0) + n
    return out


def phase_train(shape, device, args, *, compile: bool = False, write=None) -> dict:
    """Dense vs SLA for each mode; ratios within a mode, from this run."""
    modes = ("full",) if compile else ("full", "lora")
    rows: list[dict] = []
    out = {"tokens": shape.tokens, "steps": args.steps, "grad_ckpt": args.grad_ckpt, "rows": rows}
    for mode in modes:
        for sla in (None, sla_config(shape, args)):
            if time.monotonic() > args.deadline:
                rows.append({"mode": mode, "attention": "dense" if sla is None else "sla",
                             "skipped": "--budget-s reached"})  # fmt: skip
                continue
            key = (mode, "dense" if sla is None else "sla")
            # compiled: checkpointing where the eager step needed it (a failed try costs a compile)
            ckpt = "on" if compile and args.needed_ckpt.get(key) else args.grad_ckpt
            row = train_config(shape, device, args, mode=mode, sla=sla, compile=compile, ckpt=ckpt)
            if not compile:
                args.needed_ckpt[key] = row.get("gradient_checkpointing", False)
            rows.append(row)
            print(json.dumps(row), flush=True)
            _speedups(rows)
            if write is not None:
                write(out)
    return out


def _speedups(rows: list[dict]) -> None:
    dense = {
        r["mode"]: r["median_s"] for r in rows if r.get("attention") == "dense" and "median_s" in r
    }
    for r in rows:
        if r.get("attention") == "sla" and "median_s" in r and r["mode"] in dense:
            r["speedup_vs_dense"] = dense[r["mode"]] / r["median_s"]
