"""Inputs and timing helpers shared by the SLA kernel benchmark's modules (needs a CUDA GPU)."""

from __future__ import annotations

import torch
import triton

from sla_kernel_glue import SLAConfig
from sla_kernel_glue.triton_router import route_for_kernels


def qkv(b, h, n, d, dtype, requires_grad=False, seed=0) -> list[torch.Tensor]:
    """Three random normal (B, H, N, d) CUDA tensors from one seeded generator."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [
        torch.randn((b, h, n, d), generator=g, device="cuda", dtype=dtype).requires_grad_(
            requires_grad
        )
        for _ in range(3)
    ]


def branches_and_grads(fn, q, k, v, g_s, g_l) -> list[torch.Tensor]:
    """o_sparse, o_linear of fn(q, k, v) and the gradients of q, k, v for output gradients g_s, g_l."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    torch.autograd.backward([out.o_sparse, out.o_linear], [g_s.to(q.dtype), g_l.to(q.dtype)])
    return [out.o_sparse, out.o_linear, q.grad, k.grad, v.grad]


def bench(fn) -> float:
    """Median ms of fn by triton.testing.do_bench (warmup 25 ms, rep 200 ms)."""
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def kernel_inputs(n, topk, blkq, b, h, d, seed=5):
    """bf16 (B*H, N, d) q, k, v, an output gradient, the int32 critical blocks and the mask."""
    cfg = SLAConfig(topk=topk, blkq=blkq, blkk=64)
    q, k, v = (t.reshape(b * h, n, d) for t in qkv(b, h, n, d, torch.bfloat16, seed=seed))
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
