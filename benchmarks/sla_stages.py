"""Where the time of one SLA call goes: GPU-timed stages, and the host's share (needs a CUDA GPU).

stage_times: triton.testing.do_bench medians of the router's parts, the prologues and the fused
ops at a real size. host_costs: wall time per call of the same pieces at a size where the GPU work
is negligible (B 1, H 1), i.e. the host's time to issue them, and a cProfile of the forward.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time

import torch
import triton

from sla_kernel_glue import SLAConfig, route
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
    linear_totals,
    sla_forward,
)
from sla_kernel_glue.triton_router import pool_blocks, route_for_kernels, select_topk

from .sla_common import bench, kernel_inputs, qkv


def stage_times(n: int, topk: float, blkq: int = 64, b=2, h=16, d=128) -> dict:
    """Median ms of each stage of one forward+backward, to see where the time goes."""
    cfg, q, k, v, do, idx, mask = kernel_inputs(n, topk, blkq, b, h, d)
    q4, k4 = q.view(b, h, n, d), k.view(b, h, n, d)
    no_neg = idx[..., :0]  # kl = 0: no negligible blocks
    pq, pk = pool_blocks(q, k, blkq, 64)
    scores = torch.bmm(pq, pk.transpose(1, 2))
    kc = idx.shape[-1]
    out = {
        "router_pooling": bench(lambda: pool_blocks(q, k, blkq, 64)),
        "router_scores": bench(lambda: torch.bmm(pq, pk.transpose(1, 2))),
        "router_topk": bench(lambda: select_topk(scores, kc)),
        "router_torch_topk_sort": bench(
            lambda: scores.topk(kc, dim=-1, sorted=False).indices.sort(dim=-1)
        ),
        "router": bench(lambda: route_for_kernels(q4, k4, cfg)),
        "router_torch": bench(lambda: route(q4, k4, cfg)),
        "linear_totals": bench(lambda: linear_totals(k, v, FMAP_CODES["softmax"])),
        "column_lists_sort": bench(lambda: column_lists(idx, triton.cdiv(n, 64))),
        "column_lists_mask": bench(lambda: column_lists_from_mask(mask, idx[0].numel())),
    }
    for name, mode in (("marginal", LINEAR_MARGINAL), ("all", LINEAR_ALL)):
        settings = KernelSettings(blkq=blkq, blkk=64, fmap=FMAP_CODES["softmax"], linear_mode=mode)
        fwd = lambda settings=settings: sla_forward(q, k, v, idx, no_neg, settings)  # noqa: E731
        saved = ForwardState(q, k, v, idx, no_neg, *fwd())
        out[f"forward_op_{name}"] = bench(fwd)
        out[f"backward_prologue_{name}"] = bench(
            lambda s=settings, saved=saved: bwd_prologue(q, do, do, saved, s)
        )
        out[f"backward_op_{name}"] = bench(
            lambda settings=settings, saved=saved: sla_backward(do, do, saved, settings)
        )
    out.update({"N": n, "topk": topk, "blkq": blkq, "B": b, "H": h})
    return out


def _host_us(fn, calls: int = 200) -> float:
    """Wall microseconds per call of fn, synchronised once around the loop."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def _call_fns(q, k, v, g, cfg) -> dict:
    def fwd():
        with torch.no_grad():
            sla_triton(q, k, v, config=cfg)

    def fwd_bwd():
        out = sla_triton(q, k, v, config=cfg)
        torch.autograd.backward([out.o_sparse, out.o_linear], [g, g])

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def host_costs(scope: str = "all", n: int = 1024, d: int = 128, profile_calls: int = 300) -> dict:
    """Host microseconds per call of the router's parts, the forward op and whole SLA calls at
    B 1, H 1 (GPU work of a few microseconds: the loop runs at the host's pace), and the top of a
    cProfile of the forward."""
    cfg = SLAConfig(topk=0.05, linear_scope=scope)
    q, k, v = qkv(1, 1, n, d, torch.bfloat16, requires_grad=True, seed=9)
    g = torch.randn_like(q)
    q3, k3, v3 = (t.detach().reshape(1, n, d) for t in (q, k, v))
    _, idx = route_for_kernels(q, k, cfg)
    mode = LINEAR_ALL if scope == "all" else LINEAR_MARGINAL
    settings = KernelSettings(64, 64, FMAP_CODES["softmax"], mode)
    pq, pk = pool_blocks(q3, k3, 64, 64)
    scores = torch.bmm(pq, pk.transpose(1, 2))
    out = {
        "scope": scope,
        "N": n,
        "pool_blocks": _host_us(lambda: pool_blocks(q3, k3, 64, 64)),
        "scores_bmm": _host_us(lambda: torch.bmm(pq, pk.transpose(1, 2))),
        "select_topk": _host_us(lambda: select_topk(scores, idx.shape[-1])),
        "route_for_kernels": _host_us(lambda: route_for_kernels(q, k, cfg)),
        "linear_totals": _host_us(lambda: linear_totals(k3, v3, FMAP_CODES["softmax"])),
        "sla_forward": _host_us(lambda: sla_forward(q3, k3, v3, idx, idx[..., :0], settings)),
        "empty_kernel_launch": _host_us(lambda: torch.empty(1, device="cuda").zero_()),
    }
    fns = _call_fns(q, k, v, g, cfg)
    for name, fn in fns.items():
        out[f"sla_{name}"] = _host_us(fn)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(profile_calls):
        fns["fwd"]()
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
    out["profile_fwd_tottime"] = text.getvalue()
    return out
