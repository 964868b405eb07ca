"""Benchmark and real-size check of SLA's Triton kernels against torch SDPA (cuDNN and flash).

    python -m benchmarks.sla_kernels --out results/          # checks, then timings
    python -m benchmarks.sla_kernels --skip-check --n 8192   # timings only

Checks: forward and gradients of sla_triton (float32 inputs, bf16 compute) against the float64
reference, next to the error of the reference run in bf16 (the tolerance rule of style.md), and
whether the Triton router picks the same blocks as router.route. Timings: triton.testing.do_bench
medians of forward and forward+backward, and the peak memory of one forward+backward.
Needs a CUDA GPU; not on the training path.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from sla_kernel_glue import SLAConfig, route, sla_reference
from sla_kernel_glue.triton_backend import sla_triton
from sla_kernel_glue.triton_bwd import column_lists, sla_backward
from sla_kernel_glue.triton_fwd import (
    FMAP_CODES,
    LINEAR_ALL,
    LINEAR_MARGINAL,
    ForwardState,
    KernelSettings,
    linear_totals,
    sla_forward,
)
from sla_kernel_glue.triton_router import block_sums, route_triton

CHECK_CASES = [
    # (B, H, N, d, blkq, blkk, topk, feature_map, linear_scope)
    (1, 4, 4133, 128, 64, 64, 0.05, "softmax", "marginal"),
    (1, 4, 4133, 128, 128, 64, 0.2, "softmax", "marginal"),
    (1, 4, 2048, 64, 64, 64, 0.1, "elu", "marginal"),
    (1, 4, 2000, 32, 64, 32, 0.1, "relu", "all"),
    (1, 2, 1000, 128, 64, 64, 1.0, "softmax", "marginal"),
]


def _qkv(b, h, n, d, dtype, requires_grad=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [
        torch.randn((b, h, n, d), generator=g, device="cuda", dtype=dtype).requires_grad_(
            requires_grad
        )
        for _ in range(3)
    ]


def _branches_and_grads(fn, q, k, v, g_s, g_l):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    torch.autograd.backward([out.o_sparse, out.o_linear], [g_s.to(q.dtype), g_l.to(q.dtype)])
    return [out.o_sparse, out.o_linear, q.grad, k.grad, v.grad]


def check_case(case) -> dict:
    """Max abs errors vs the float64 reference: Triton (bf16) and the reference in bf16."""
    b, h, n, d, bq, bk, topk, fmap, scope = case
    cfg = SLAConfig(topk=topk, blkq=bq, blkk=bk, feature_map=fmap, linear_scope=scope)
    q, k, v = _qkv(b, h, n, d, torch.float32, seed=1)
    g_s, g_l = _qkv(b, h, n, d, torch.float32, seed=2)[:2]
    routing = route(q, k, cfg)
    exact = _branches_and_grads(
        lambda *a: sla_reference(*(t.double() for t in a), config=cfg, routing=routing),
        q,
        k,
        v,
        g_s,
        g_l,
    )
    same = _branches_and_grads(
        lambda *a: sla_reference(*(t.bfloat16() for t in a), config=cfg, routing=routing),
        q,
        k,
        v,
        g_s,
        g_l,
    )
    kern = _branches_and_grads(
        lambda *a: sla_triton(*a, config=cfg, use_bf16=True), q, k, v, g_s, g_l
    )
    names = ["o_sparse", "o_linear", "dq", "dk", "dv"]
    result = {"case": list(case)}
    for name, e, s, t in zip(names, exact, same, kern, strict=True):
        err_t = (t.double() - e).abs().max().item()
        err_s = (s.double() - e).abs().max().item()
        result[name] = {"triton": err_t, "ref_bf16": err_s, "scale": e.abs().max().item()}
    result["ok"] = all(
        result[nm]["triton"] <= 2 * result[nm]["ref_bf16"] + 1e-3 * result[nm]["scale"]
        for nm in names
    )
    return result


def check_router(n: int) -> dict:
    b, h, d = 2, 16, 128
    q, k, _ = _qkv(b, h, n, d, torch.bfloat16, seed=3)
    out = {}
    for topk in (0.05, 0.2):
        cfg = SLAConfig(topk=topk)
        a, r = route(q, k, cfg), route_triton(q, k, cfg)
        out[str(topk)] = {
            "rows_equal_fraction": (a.indices == r.indices).all(-1).float().mean().item(),
            "ms_route": triton.testing.do_bench(
                lambda cfg=cfg: route(q, k, cfg), return_mode="median"
            ),
            "ms_route_triton": triton.testing.do_bench(
                lambda cfg=cfg: route_triton(q, k, cfg), return_mode="median"
            ),
        }
    return out


def stage_times(n: int, topk: float, blkq: int = 64, b=2, h=16, d=128) -> dict:
    """Median ms of each stage of one forward+backward, to see where the time goes."""
    cfg = SLAConfig(topk=topk, blkq=blkq, blkk=64)
    q, k, v = (t.reshape(b * h, n, d) for t in _qkv(b, h, n, d, torch.bfloat16, seed=5))
    do = torch.randn_like(q)
    idx = route_triton(q.view(b, h, n, d), k.view(b, h, n, d), cfg).indices
    idx = idx.reshape(b * h, -1, idx.shape[-1]).to(torch.int32).contiguous()
    no_neg = idx[..., :0]  # kl = 0: no negligible blocks
    bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")  # noqa: E731
    scores = torch.randn((b, h, n // blkq, n // 64), device="cuda")
    kc = cfg.critical_blocks(n // 64)
    out = {
        "router_pooling": bench(lambda: block_sums(k, 64)),
        "router_topk_sort": bench(
            lambda: scores.topk(kc, dim=-1, sorted=False).indices.sort(dim=-1)
        ),
        "router": bench(lambda: route_triton(q.view(b, h, n, d), k.view(b, h, n, d), cfg)),
        "linear_totals": bench(lambda: linear_totals(k, v, 64, FMAP_CODES["softmax"])),
        "column_lists": bench(lambda: column_lists(idx, n // 64)),
    }
    for name, mode in (("marginal", LINEAR_MARGINAL), ("all", LINEAR_ALL)):
        settings = KernelSettings(blkq=blkq, blkk=64, fmap=FMAP_CODES["softmax"], linear_mode=mode)
        fwd = lambda settings=settings: sla_forward(q, k, v, idx, no_neg, settings)  # noqa: E731
        saved = ForwardState(q, k, v, idx, no_neg, *fwd())
        out[f"forward_op_{name}"] = bench(fwd)
        out[f"backward_op_{name}"] = bench(
            lambda settings=settings, saved=saved: sla_backward(do, do, saved, settings)
        )
    out.update({"N": n, "topk": topk, "blkq": blkq, "B": b, "H": h})
    return out


def _peak_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_n(
    n: int, topks: list[float], blkqs: list[int], scopes: list[str], b=2, h=16, d=128
) -> list[dict]:
    q, k, v = _qkv(b, h, n, d, torch.bfloat16, requires_grad=True, seed=4)
    g = torch.randn_like(q)
    rows = []

    def timed(name, topk, fwd, fwd_bwd):
        try:
            fwd()  # compile and autotune outside the timing
            fwd_bwd()
            row = {
                "N": n,
                "impl": name,
                "topk": topk,
                "fwd_ms": triton.testing.do_bench(fwd, warmup=25, rep=150, return_mode="median"),
                "fwd_bwd_ms": triton.testing.do_bench(
                    fwd_bwd, warmup=25, rep=150, grad_to_none=[q, k, v], return_mode="median"
                ),
                "peak_mib": _peak_mib(fwd_bwd),
            }
        except Exception as exc:  # recorded in the results as this row's error
            row = {
                "N": n,
                "impl": name,
                "topk": topk,
                "fwd_ms": math.nan,
                "fwd_bwd_ms": math.nan,
                "peak_mib": math.nan,
                "error": f"{type(exc).__name__}: {exc}"[:500],
            }
        print(json.dumps(row), flush=True)
        rows.append(row)

    for name, backend in (
        ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
        ("sdpa_flash", SDPBackend.FLASH_ATTENTION),
    ):

        def fwd(backend=backend):
            with sdpa_kernel(backend), torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v)

        def fwd_bwd(backend=backend):
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v).backward(g)

        timed(name, 1.0, fwd, fwd_bwd)

    for scope, blkq, topk in [(sc, bq, t) for sc in scopes for bq in blkqs for t in topks]:
        cfg = SLAConfig(topk=topk, blkq=blkq, blkk=64, linear_scope=scope)

        def fwd(cfg=cfg):
            with torch.no_grad():
                return sla_triton(q, k, v, config=cfg)

        def fwd_bwd(cfg=cfg):
            out = sla_triton(q, k, v, config=cfg)
            torch.autograd.backward([out.o_sparse, out.o_linear], [g, g])

        timed(f"sla_{scope}_q{blkq}", topk, fwd, fwd_bwd)
    return rows


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json")
    args = parser.parse_args(argv)
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
    if not args.skip_check:
        results["checks"] = []
        for case in CHECK_CASES:
            try:
                r = check_case(case)
            except Exception as exc:  # recorded as a failed check; the timings still run
                r = {"case": list(case), "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            print(json.dumps(r), flush=True)
            results["checks"].append(r)
        results["router"] = check_router(max(args.n))
        print(json.dumps(results["router"]), flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "checks.json").write_text(json.dumps(results, indent=1))
    results["timings"] = [
        row
        for n in args.n
        for row in bench_n(n, args.topk, args.blkq, args.scope, b=args.batch, h=args.heads)
    ]
    results["stages"] = []
    for bq in args.blkq:
        try:
            stages = stage_times(max(args.n), 0.05, bq, b=args.batch, h=args.heads)
        except Exception as exc:  # recorded; the table below still prints
            stages = {"blkq": bq, "error": f"{type(exc).__name__}: {exc}"[:500]}
        results["stages"].append(stages)
    for r in results["stages"]:
        print(json.dumps(r), flush=True)
    for row in results["timings"]:
        dense = next(
            r for r in results["timings"] if r["N"] == row["N"] and r["impl"] == "sdpa_cudnn"
        )
        row["speedup_fwd_vs_cudnn"] = dense["fwd_ms"] / row["fwd_ms"]
        row["speedup_fwd_bwd_vs_cudnn"] = dense["fwd_bwd_ms"] / row["fwd_bwd_ms"]
    print("| N | impl | topk | fwd ms | fwd+bwd ms | fwd x | fwd+bwd x | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["timings"]:
        print(
            f"| {r['N']} | {r['impl']} | {r['topk']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.2f} | "
            f"{r['speedup_fwd_vs_cudnn']:.2f} | {r['speedup_fwd_bwd_vs_cudnn']:.2f} | {r['peak_mib']:.0f} |"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    ok = all(c["ok"] for c in results.get("checks", []))
    return 0 if ok and not math.isnan(sum(r["fwd_ms"] for r in results["timings"])) else 1


if __name__ == "__main__":
    sys.exit(main())
