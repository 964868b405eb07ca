"""Benchmark and real-size check of SLA's Triton kernels against torch SDPA (cuDNN and flash).

    python -m benchmarks.sla_kernels --out results/          # checks, then timings
    python -m benchmarks.sla_kernels --skip-check --n 8192   # timings only

Checks (sla_checks.py): forward and gradients of sla_triton (float32 inputs, bf16 compute) against
the float64 reference, next to the error of the reference run in bf16 (the tolerance rule of
style.md), and whether the Triton router picks the same blocks as router.route. Timings:
triton.testing.do_bench medians of forward and forward+backward, and the peak memory of one
forward+backward; stage and host times (sla_stages.py); launch variants (sla_explore.py).
Needs a CUDA GPU; not on the training path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from sla_kernel_glue import SLAConfig, triton_bwd
from sla_kernel_glue.triton_backend import sla_triton

from .sla_checks import CHECK_CASES, check_case, check_router
from .sla_common import qkv
from .sla_explore import explore, explore_streams, extra_trials, split_trials
from .sla_stages import host_costs, stage_times

# What a config's third field switches off, to time with and without it in one run.
CONFIG_FLAGS = {
    "nosplit": (triton_bwd, "MARGINAL_DKDV_SPLIT", False),
}


@contextlib.contextmanager
def config_flags(flags: list[str]):
    """Set the module switches that flags name, and restore them afterwards."""
    saved = []
    try:
        for flag in flags:
            module, name, value = CONFIG_FLAGS[flag]
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def _peak_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _timed(row: dict, fwd, fwd_bwd, grads: list[torch.Tensor]) -> dict:
    """row with the median ms of fwd and fwd_bwd and the peak MiB of fwd_bwd (or the error)."""
    try:
        fwd()  # compile and autotune outside the timing
        fwd_bwd()
        row["fwd_ms"] = triton.testing.do_bench(fwd, warmup=25, rep=150, return_mode="median")
        row["fwd_bwd_ms"] = triton.testing.do_bench(
            fwd_bwd, warmup=25, rep=150, grad_to_none=grads, return_mode="median"
        )
        row["peak_mib"] = _peak_mib(fwd_bwd)
    except Exception as exc:  # recorded in the results as this row's error
        row.update(fwd_ms=math.nan, fwd_bwd_ms=math.nan, peak_mib=math.nan)
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
    print(json.dumps(row), flush=True)
    return row


def bench_n(n: int, topks: list[float], configs: list[tuple], b=2, h=16, d=128) -> list[dict]:
    """SDPA cuDNN and flash (cuDNN alone above N 32768), then SLA for each (scope, blkq, flags)
    and topk."""
    q, k, v = qkv(b, h, n, d, torch.bfloat16, requires_grad=True, seed=4)
    g = torch.randn_like(q)
    rows = []
    dense = [("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]
    for name, backend in dense[:1] if n > 32768 else dense:  # flash: ~2x cuDNN, seconds per call

        def fwd(backend=backend):
            with sdpa_kernel(backend), torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v)

        def fwd_bwd(backend=backend):
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v).backward(g)

        rows.append(_timed({"N": n, "impl": name, "topk": 1.0}, fwd, fwd_bwd, [q, k, v]))

    for scope, blkq, flags, topk in [(*c, t) for c in configs for t in topks]:
        cfg = SLAConfig(topk=topk, blkq=blkq, blkk=64, linear_scope=scope)

        def fwd(cfg=cfg):
            with torch.no_grad():
                return sla_triton(q, k, v, config=cfg)

        def fwd_bwd(cfg=cfg):
            out = sla_triton(q, k, v, config=cfg)
            torch.autograd.backward([out.o_sparse, out.o_linear], [g, g])

        name = f"sla_{scope}_q{blkq}" + "".join(f"_{f}" for f in flags)
        with config_flags(flags):
            rows.append(_timed({"N": n, "impl": name, "topk": topk}, fwd, fwd_bwd, [q, k, v]))
    return rows


def _write(out: Path | None, name: str, results: dict) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(results, indent=1))


def _print_table(timings: list[dict]) -> None:
    """Add the ratios to SDPA cuDNN of the same N to each row, and print the markdown table."""
    for row in timings:
        dense = next(r for r in timings if r["N"] == row["N"] and r["impl"] == "sdpa_cudnn")
        row["speedup_fwd_vs_cudnn"] = dense["fwd_ms"] / row["fwd_ms"]
        row["speedup_fwd_bwd_vs_cudnn"] = dense["fwd_bwd_ms"] / row["fwd_bwd_ms"]
    print("| N | impl | topk | fwd ms | fwd+bwd ms | fwd x | fwd+bwd x | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in timings:
        print(
            f"| {r['N']} | {r['impl']} | {r['topk']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.2f} | "
            f"{r['speedup_fwd_vs_cudnn']:.2f} | {r['speedup_fwd_bwd_vs_cudnn']:.2f} | {r['peak_mib']:.0f} |"
        )


def _configs(args) -> list[tuple[str, int, list[str]]]:
    """(scope, blkq, flags) from --configs SCOPE:BLKQ[:FLAG...], else --scope x --blkq."""
    if args.configs is None:
        return [(sc, bq, []) for sc in args.scope for bq in args.blkq]
    out = []
    for c in args.configs:
        scope, blkq, *flags = c.split(":")
        unknown = [f for f in flags if f not in CONFIG_FLAGS]
        if unknown:
            raise SystemExit(
                f"--configs {c}: unknown flag(s) {unknown}; known: {list(CONFIG_FLAGS)}"
            )
        out.append((scope, int(blkq), flags))
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--topk", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--blkq", type=int, nargs="+", default=[64])
    parser.add_argument(
        "--scope", nargs="+", default=["marginal", "all"], choices=["marginal", "all", "none"]
    )
    parser.add_argument(
        "--batch", type=int, default=2, help="B of the timings (checks: fixed cases)"
    )
    parser.add_argument("--heads", type=int, default=16, help="H of the timings")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--skip-stages", action="store_true", help="no stage or host times")
    parser.add_argument(
        "--explore", action="store_true", help="check and time each kernel's launch variants first"
    )
    parser.add_argument("--only-explore", action="store_true", help="stop after the explore rounds")
    parser.add_argument(
        "--explore-extra",
        action="store_true",
        help="explore a second round (one-stage and three-stage launches, the prologues, top-k)",
    )
    parser.add_argument(
        "--explore-split",
        action="store_true",
        help="the marginal dK/dV in one pass against two passes, at the largest --n",
    )
    parser.add_argument("--host", action="store_true", help="host time per call of each piece")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="SCOPE:BLKQ[:FLAG...] to time (e.g. all:64 marginal:128:nosplit) instead of "
        f"--scope x --blkq; flags: {', '.join(CONFIG_FLAGS)}",
    )
    parser.add_argument(
        "--check-cases",
        type=int,
        nargs="+",
        default=list(range(len(CHECK_CASES))),
        help="indices into CHECK_CASES of the real-size checks to run (default: all)",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json")
    return parser


def _explore_rounds(args, results: dict) -> None:
    n, b, h = max(args.n), args.batch, args.heads
    if args.explore_split:
        results["explore_split"] = explore(
            n, 0.05, b, h, args.blkq, ["marginal"], trials=split_trials
        )
        _write(args.out, "explore_split.json", results)
    if args.explore_extra:
        results["explore_extra"] = explore(
            n, 0.05, b, h, args.blkq, args.scope, trials=extra_trials
        )
        results["explore_streams"] = [r for m in args.n for r in explore_streams(m, b, h)]
        _write(args.out, "explore_extra.json", results)
    if args.explore:
        results["explore"] = explore(n, 0.05, b, h, args.blkq, args.scope)
        _write(args.out, "explore.json", results)
    if args.host:
        results["host_costs"] = [host_costs(sc) for sc in args.scope]
        for r in results["host_costs"]:
            print(r["profile_fwd_tottime"], flush=True)
            print(
                json.dumps({k: v for k, v in r.items() if k != "profile_fwd_tottime"}), flush=True
            )
        _write(args.out, "host.json", results)


def _checks(args, results: dict) -> None:
    results["checks"] = []
    for case in [CHECK_CASES[i] for i in args.check_cases]:
        try:
            r = check_case(case)
        except Exception as exc:  # recorded as a failed check; the timings still run
            r = {"case": list(case), "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        print(json.dumps(r), flush=True)
        results["checks"].append(r)
    results["router"] = check_router(max(args.n))
    print(json.dumps(results["router"]), flush=True)
    _write(args.out, "checks.json", results)


def _stages(args, results: dict) -> None:
    results["stages"] = []
    for n, bq in [(n, args.blkq[0]) for n in args.n]:
        try:
            stages = stage_times(n, 0.05, bq, b=args.batch, h=args.heads)
        except Exception as exc:  # recorded; the table below still prints
            stages = {"blkq": bq, "error": f"{type(exc).__name__}: {exc}"[:500]}
        print(json.dumps(stages), flush=True)
        results["stages"].append(stages)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.sla_kernels needs a CUDA GPU", file=sys.stderr)
        return 2
    results: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "argv": sys.argv,
    }
    print(json.dumps(results), flush=True)
    _explore_rounds(args, results)
    if args.only_explore:
        return 0
    if not args.skip_check:
        _checks(args, results)
    results["timings"] = [
        row
        for n in args.n
        for row in bench_n(n, args.topk, _configs(args), b=args.batch, h=args.heads)
    ]
    _write(args.out, "results.json", results)
    if not args.skip_stages:
        _stages(args, results)
    _print_table(results["timings"])
    _write(args.out, "results.json", results)
    ok = all(c["ok"] for c in results.get("checks", []))
    return 0 if ok and not math.isnan(sum(r["fwd_ms"] for r in results["timings"])) else 1


if __name__ == "__main__":
    sys.exit(main())
