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
import dataclasses
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
from sla_kernel_glue.triton_bwd import (
    bwd_prologue,
    column_lists,
    column_lists_from_mask,
    sla_backward,
)
from sla_kernel_glue.triton_fwd import (
    FMAP_CODES,
    LINEAR_ALL,
    LINEAR_MARGINAL,
    ForwardState,
    KernelSettings,
    LaunchConfig,
    StreamLaunch,
    linear_totals,
    sla_forward,
)
from sla_kernel_glue.triton_router import pool_blocks, route_for_kernels, route_triton, select_topk

CHECK_CASES = [
    # (B, H, N, d, blkq, blkk, topk, feature_map, linear_scope)
    (1, 4, 4133, 128, 64, 64, 0.05, "softmax", "marginal"),
    (1, 4, 4133, 128, 128, 64, 0.2, "softmax", "marginal"),
    (1, 4, 2048, 64, 64, 64, 0.1, "elu", "marginal"),
    (1, 4, 2000, 32, 64, 32, 0.1, "relu", "all"),
    (1, 2, 1000, 128, 64, 64, 1.0, "softmax", "marginal"),
    (1, 4, 4133, 128, 64, 64, 0.05, "softmax", "all"),
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


def _bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def _kernel_inputs(n, topk, blkq, b, h, d, seed=5):
    """bf16 (B*H, N, d) q, k, v, an output gradient, the int32 critical blocks and the mask."""
    cfg = SLAConfig(topk=topk, blkq=blkq, blkk=64)
    q, k, v = (t.reshape(b * h, n, d) for t in _qkv(b, h, n, d, torch.bfloat16, seed=seed))
    routing, idx = route_for_kernels(q.view(b, h, n, d), k.view(b, h, n, d), cfg)
    return (
        cfg,
        q,
        k,
        v,
        torch.randn_like(q),
        idx,
        routing.critical.reshape(b * h, *idx.shape[1:2], -1),
    )


def stage_times(n: int, topk: float, blkq: int = 64, b=2, h=16, d=128) -> dict:
    """Median ms of each stage of one forward+backward, to see where the time goes."""
    cfg, q, k, v, do, idx, mask = _kernel_inputs(n, topk, blkq, b, h, d)
    q4, k4 = q.view(b, h, n, d), k.view(b, h, n, d)
    no_neg = idx[..., :0]  # kl = 0: no negligible blocks
    pq, pk = pool_blocks(q, k, blkq, 64)
    scores = torch.bmm(pq, pk.transpose(1, 2))
    kc = idx.shape[-1]
    out = {
        "router_pooling": _bench(lambda: pool_blocks(q, k, blkq, 64)),
        "router_scores": _bench(lambda: torch.bmm(pq, pk.transpose(1, 2))),
        "router_topk": _bench(lambda: select_topk(scores, kc)),
        "router_torch_topk_sort": _bench(
            lambda: scores.topk(kc, dim=-1, sorted=False).indices.sort(dim=-1)
        ),
        "router": _bench(lambda: route_for_kernels(q4, k4, cfg)),
        "router_torch": _bench(lambda: route(q4, k4, cfg)),
        "linear_totals": _bench(lambda: linear_totals(k, v, FMAP_CODES["softmax"])),
        "column_lists_sort": _bench(lambda: column_lists(idx, triton.cdiv(n, 64))),
        "column_lists_mask": _bench(lambda: column_lists_from_mask(mask, idx[0].numel())),
    }
    for name, mode in (("marginal", LINEAR_MARGINAL), ("all", LINEAR_ALL)):
        settings = KernelSettings(blkq=blkq, blkk=64, fmap=FMAP_CODES["softmax"], linear_mode=mode)
        fwd = lambda settings=settings: sla_forward(q, k, v, idx, no_neg, settings)  # noqa: E731
        saved = ForwardState(q, k, v, idx, no_neg, *fwd())
        out[f"forward_op_{name}"] = _bench(fwd)
        out[f"backward_prologue_{name}"] = _bench(
            lambda s=settings, saved=saved: bwd_prologue(q, do, do, saved, s)
        )
        out[f"backward_op_{name}"] = _bench(
            lambda settings=settings, saved=saved: sla_backward(do, do, saved, settings)
        )
    out.update({"N": n, "topk": topk, "blkq": blkq, "B": b, "H": h})
    return out


def cpu_us_per_call(n: int, topk: float, scope: str, b=2, h=16, d=128, calls=50) -> dict:
    """Host time to launch one SLA forward and one forward+backward (no synchronisation inside),
    against the GPU time of the same call: where the host is slower, it sets the pace."""
    import time

    q, k, v = _qkv(b, h, n, d, torch.bfloat16, requires_grad=True, seed=6)
    g = torch.randn_like(q)
    cfg = SLAConfig(topk=topk, linear_scope=scope)

    def fwd():
        with torch.no_grad():
            sla_triton(q, k, v, config=cfg)

    def fwd_bwd():
        out = sla_triton(q, k, v, config=cfg)
        torch.autograd.backward([out.o_sparse, out.o_linear], [g, g])

    out = {"N": n, "topk": topk, "scope": scope}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out[f"{name}_host_us"] = (time.perf_counter() - t0) / calls * 1e6
        torch.cuda.synchronize()
    return out


# Launch variants the explore mode checks and times: (num_warps, num_stages, pair).
FWD_VARIANTS = [(4, 2, 1), (4, 3, 1), (8, 2, 1), (4, 2, 2), (4, 3, 2), (8, 2, 2)]
BWD_VARIANTS = [(4, 2, 1), (8, 2, 1), (4, 2, 2), (8, 2, 2)]
Q128_VARIANTS = [(8, 2, 1), (8, 3, 1)]


def _variant_run(q, k, v, g, idx, settings, fwd=None, dq=None, dkdv=None, phik=True):
    no_neg = idx[..., :0]
    outs = sla_forward(q, k, v, idx, no_neg, settings, fwd, phik)
    saved = ForwardState(q, k, v, idx, no_neg, *outs)
    return outs, saved, lambda: sla_backward(g, g, saved, settings, dq, dkdv, phik)


class VariantCheck:
    """Errors of launch variants against the float64 reference at one real size (B 1, H 4,
    N 4096, d 128, blkk 64, bf16), beside the reference's own error in bf16 (style.md's rule)."""

    def __init__(self, blkq: int, scope: str, topk: float = 0.05, n: int = 4096):
        cfg = SLAConfig(topk=topk, blkq=blkq, blkk=64, linear_scope=scope)
        q, k, v, g = (
            _qkv(1, 4, n, 128, torch.bfloat16, seed=7)
            + _qkv(1, 4, n, 128, torch.bfloat16, seed=8)[:1]
        )
        routing = route(q, k, cfg)

        def reference(*a):
            return sla_reference(*a, config=cfg, routing=routing)

        exact = _branches_and_grads(lambda *a: reference(*(t.double() for t in a)), q, k, v, g, g)
        same = _branches_and_grads(reference, q, k, v, g, g)
        self.exact = exact
        self.same_err = [
            (s.double() - e).abs().max().item() for s, e in zip(same, exact, strict=True)
        ]
        self.inputs = [t.reshape(4, n, 128) for t in (q, k, v, g)]
        self.idx = routing.indices.reshape(4, -1, routing.indices.shape[-1]).int().contiguous()
        mode = LINEAR_ALL if scope == "all" else LINEAR_MARGINAL
        self.settings = KernelSettings(blkq, 64, FMAP_CODES["softmax"], mode)

    def __call__(self, fwd=None, dq=None, dkdv=None, phik=True) -> bool:
        q, k, v, g = self.inputs
        outs, _, bwd = _variant_run(q, k, v, g, self.idx, self.settings, fwd, dq, dkdv, phik)
        kern = [outs[0], outs[1], *bwd()]
        return all(
            (t.reshape(e.shape).double() - e).abs().max().item()
            <= 2 * s + 1e-3 * e.abs().max().item()
            for t, e, s in zip(kern, self.exact, self.same_err, strict=True)
        )


def _trials(scope: str, blkq: int) -> list[tuple]:
    """(kernel timed, fwd, dq, dkdv launches, phik buffer): each kernel's variants, the others fixed."""
    variants = Q128_VARIANTS if blkq == 128 else FWD_VARIANTS
    bwd_variants = Q128_VARIANTS if blkq == 128 else BWD_VARIANTS
    fixed = LaunchConfig(*bwd_variants[0])
    trials = [("fwd", LaunchConfig(*w), fixed, fixed, True) for w in variants]
    if scope == "marginal":
        trials.append(("fwd_no_phik", LaunchConfig(*variants[0]), fixed, fixed, False))
    trials += [("dq", fixed, LaunchConfig(*w), fixed, True) for w in bwd_variants]
    trials += [("dkdv", fixed, fixed, LaunchConfig(*w), True) for w in bwd_variants]
    return trials


def _explore_trial(check: VariantCheck, inputs: list, trial: tuple) -> dict:
    kind, fl, dl, kl, phik = trial
    q, k, v, g, idx = inputs
    launch = {"fwd": fl, "fwd_no_phik": fl, "dq": dl, "dkdv": kl}[kind]
    row = {"kernel": kind, "launch": dataclasses.asdict(launch), "phik": phik}
    try:
        row["ok"] = check(fl, dl, kl, phik)
        if kind.startswith("fwd"):
            row["ms"] = _bench(lambda: _variant_run(q, k, v, g, idx, check.settings, fl, phik=phik))
        else:
            row["ms"] = _bench(_variant_run(q, k, v, g, idx, check.settings, fl, dl, kl, phik)[2])
    except Exception as exc:  # recorded: a variant that does not compile or run
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def _extra_trials(scope: str, blkq: int) -> list[tuple]:
    """A second round: one pipeline stage (more programs per SM), three for the backward."""
    if blkq != 64:
        return []
    fixed = LaunchConfig(4, 2, 1)
    extra = [(4, 1, 1), (4, 3, 1), (8, 3, 1)] if scope == "marginal" else [(4, 1, 1), (4, 3, 1)]
    trials = [("fwd", LaunchConfig(4, 1, 1), fixed, fixed, True)]
    trials += [("dq", fixed, LaunchConfig(*w), fixed, True) for w in extra[:2]]
    trials += [("dkdv", fixed, fixed, LaunchConfig(*w), True) for w in extra]
    return trials


STREAM_VARIANTS = [
    StreamLaunch(64, 8, 3, 16),
    StreamLaunch(64, 8, 2, 16),
    StreamLaunch(128, 8, 2, 16),
    StreamLaunch(128, 8, 3, 16),
    StreamLaunch(64, 4, 3, 16),
    StreamLaunch(64, 8, 3, 32),
    StreamLaunch(128, 8, 2, 32),
]


def explore_streams(n: int, b: int, h: int) -> list[dict]:
    """The router's top-k (float sort against int64 keys) and the two linear prologues under each
    StreamLaunch, each against the first variant's result (the default, which the checks cover)."""
    _, q, k, v, g, idx, _ = _kernel_inputs(n, 0.05, 64, b, h, 128)
    pq, pk = pool_blocks(q, k, 64, 64)
    scores = torch.bmm(pq, pk.transpose(1, 2))
    kc = idx.shape[-1]
    rows = []
    base = select_topk(scores, kc, float_sort=False)[0]
    for fs in (False, True):
        same = torch.equal(select_topk(scores, kc, float_sort=fs)[0], base)
        ms = _bench(lambda fs=fs: select_topk(scores, kc, float_sort=fs))
        rows.append({"N": n, "kernel": "topk", "float_sort": fs, "ok": same, "ms": ms})
    settings = KernelSettings(64, 64, FMAP_CODES["softmax"], LINEAR_ALL)
    saved = ForwardState(
        q, k, v, idx, idx[..., :0], *sla_forward(q, k, v, idx, idx[..., :0], settings)
    )
    fns = {
        "linear_totals": lambda la: linear_totals(k, v, FMAP_CODES["softmax"], launch=la)[:2],
        "bwd_prologue": lambda la: bwd_prologue(q, g, g, saved, settings, la),
    }
    for name, fn in fns.items():
        ref = fn(STREAM_VARIANTS[0])
        for la in STREAM_VARIANTS:
            out = fn(la)
            err = max(
                (a - b).abs().max().item() / (b.abs().max().item() + 1e-30)
                for a, b in zip(out, ref, strict=True)
                if a.dtype == torch.float32
            )
            row = {"N": n, "kernel": name, "launch": dataclasses.asdict(la), "rel_diff": err}
            row.update(ok=err <= 1e-5, ms=_bench(lambda la=la, fn=fn: fn(la)))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def explore(
    n: int,
    topk: float,
    b: int,
    h: int,
    blkqs: list[int],
    scopes: list[str],
    check_n: int = 4096,
    trials=_trials,
) -> list[dict]:
    """Check each launch variant of the three fused kernels at a real size, then time it at N."""
    rows = []
    for scope, blkq in [(sc, bq) for sc in scopes for bq in blkqs]:
        if not trials(scope, blkq):
            continue
        check = VariantCheck(blkq, scope, n=check_n)
        _, q, k, v, g, idx, _ = _kernel_inputs(n, topk, blkq, b, h, 128)
        for trial in trials(scope, blkq):
            row = {"scope": scope, "blkq": blkq, "N": n, "topk": topk}
            row.update(_explore_trial(check, [q, k, v, g, idx], trial))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _peak_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_n(
    n: int, topks: list[float], configs: list[tuple[str, int]], b=2, h=16, d=128
) -> list[dict]:
    """SDPA cuDNN and flash (cuDNN alone above N 32768), then SLA for each (scope, blkq) and topk."""
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

    dense = [("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]
    for name, backend in dense[:1] if n > 32768 else dense:  # flash: ~2x cuDNN, seconds per call

        def fwd(backend=backend):
            with sdpa_kernel(backend), torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v)

        def fwd_bwd(backend=backend):
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v).backward(g)

        timed(name, 1.0, fwd, fwd_bwd)

    for scope, blkq, topk in [(sc, bq, t) for sc, bq in configs for t in topks]:
        cfg = SLAConfig(topk=topk, blkq=blkq, blkk=64, linear_scope=scope)

        def fwd(cfg=cfg):
            with torch.no_grad():
                return sla_triton(q, k, v, config=cfg)

        def fwd_bwd(cfg=cfg):
            out = sla_triton(q, k, v, config=cfg)
            torch.autograd.backward([out.o_sparse, out.o_linear], [g, g])

        timed(f"sla_{scope}_q{blkq}", topk, fwd, fwd_bwd)
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


def _configs(args) -> list[tuple[str, int]]:
    if args.configs is None:
        return [(sc, bq) for sc in args.scope for bq in args.blkq]
    return [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs]


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
        "--configs",
        nargs="+",
        default=None,
        help="SCOPE:BLKQ pairs to time (e.g. all:64 marginal:128) instead of --scope x --blkq",
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
    if args.explore_extra:
        results["explore_extra"] = explore(
            max(args.n), 0.05, args.batch, args.heads, args.blkq, args.scope, trials=_extra_trials
        )
        results["explore_streams"] = [
            r for n in args.n for r in explore_streams(n, args.batch, args.heads)
        ]
        _write(args.out, "explore_extra.json", results)
    if args.explore:
        results["explore"] = explore(
            max(args.n), 0.05, args.batch, args.heads, args.blkq, args.scope
        )
        _write(args.out, "explore.json", results)
    if args.only_explore:
        return 0
    if not args.skip_check:
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
    results["timings"] = [
        row
        for n in args.n
        for row in bench_n(n, args.topk, _configs(args), b=args.batch, h=args.heads)
    ]
    results["stages"] = []
    for n, bq in [(n, args.blkq[0]) for n in args.n]:
        try:
            stages = stage_times(n, 0.05, bq, b=args.batch, h=args.heads)
        except Exception as exc:  # recorded; the table below still prints
            stages = {"blkq": bq, "error": f"{type(exc).__name__}: {exc}"[:500]}
        results["stages"].append(stages)
    results["host"] = [
        cpu_us_per_call(n, 0.05, sc, b=args.batch, h=args.heads)
        for n in args.n
        if n <= 32768
        for sc in args.scope
    ]
    for r in results["stages"] + results["host"]:
        print(json.dumps(r), flush=True)
    _print_table(results["timings"])
    _write(args.out, "results.json", results)
    ok = all(c["ok"] for c in results.get("checks", []))
    return 0 if ok and not math.isnan(sum(r["fwd_ms"] for r in results["timings"])) else 1


if __name__ == "__main__":
    sys.exit(main())
