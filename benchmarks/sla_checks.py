"""Real-size checks of SLA's Triton kernels against the float64 reference (needs a CUDA GPU).

check_case: forward and gradients of sla_triton (float32 inputs, bf16 compute) against the float64
reference, next to the error of the reference run in bf16 (the tolerance rule of style.md).
check_router: whether the Triton router picks router.route's blocks. VariantCheck: the same rule
for one launch variant of the fused kernels.
"""

from __future__ import annotations

import torch
import triton

from sla_kernel_glue import SLAConfig, route, sla_reference
from sla_kernel_glue.triton_backend import sla_triton
from sla_kernel_glue.triton_bwd import sla_backward
from sla_kernel_glue.triton_fwd import (
    FMAP_CODES,
    LINEAR_ALL,
    LINEAR_MARGINAL,
    ForwardState,
    KernelSettings,
    sla_forward,
)
from sla_kernel_glue.triton_router import route_triton

from .sla_common import branches_and_grads, qkv

CHECK_CASES = [
    # (B, H, N, d, blkq, blkk, topk, feature_map, linear_scope)
    (1, 4, 4133, 128, 64, 64, 0.05, "softmax", "marginal"),
    (1, 4, 4133, 128, 128, 64, 0.2, "softmax", "marginal"),
    (1, 4, 2048, 64, 64, 64, 0.1, "elu", "marginal"),
    (1, 4, 2000, 32, 64, 32, 0.1, "relu", "all"),
    (1, 2, 1000, 128, 64, 64, 1.0, "softmax", "marginal"),
    (1, 4, 4133, 128, 64, 64, 0.05, "softmax", "all"),
]


def check_case(case) -> dict:
    """Max abs errors vs the float64 reference: Triton (bf16) and the reference in bf16."""
    b, h, n, d, bq, bk, topk, fmap, scope = case
    cfg = SLAConfig(topk=topk, blkq=bq, blkk=bk, feature_map=fmap, linear_scope=scope)
    q, k, v = qkv(b, h, n, d, torch.float32, seed=1)
    g_s, g_l = qkv(b, h, n, d, torch.float32, seed=2)[:2]
    routing = route(q, k, cfg)
    exact = branches_and_grads(
        lambda *a: sla_reference(*(t.double() for t in a), config=cfg, routing=routing),
        q,
        k,
        v,
        g_s,
        g_l,
    )
    same = branches_and_grads(
        lambda *a: sla_reference(*(t.bfloat16() for t in a), config=cfg, routing=routing),
        q,
        k,
        v,
        g_s,
        g_l,
    )
    kern = branches_and_grads(
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
    q, k, _ = qkv(b, h, n, d, torch.bfloat16, seed=3)
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


def variant_run(q, k, v, g, idx, settings, fwd=None, dq=None, dkdv=None, phik=True, split=None):
    """The forward's outputs and state under the given launches, and the backward as a closure."""
    no_neg = idx[..., :0]
    outs = sla_forward(q, k, v, idx, no_neg, settings, fwd, phik)
    saved = ForwardState(q, k, v, idx, no_neg, *outs)
    return outs, saved, lambda: sla_backward(g, g, saved, settings, dq, dkdv, phik, split)


class VariantCheck:
    """Errors of launch variants against the float64 reference at one real size (B 1, H 4,
    N 4096, d 128, blkk 64, bf16), beside the reference's own error in bf16 (style.md's rule)."""

    def __init__(self, blkq: int, scope: str, topk: float = 0.05, n: int = 4096):
        cfg = SLAConfig(topk=topk, blkq=blkq, blkk=64, linear_scope=scope)
        q, k, v, g = (
            qkv(1, 4, n, 128, torch.bfloat16, seed=7)
            + qkv(1, 4, n, 128, torch.bfloat16, seed=8)[:1]
        )
        routing = route(q, k, cfg)

        def reference(*a):
            return sla_reference(*a, config=cfg, routing=routing)

        exact = branches_and_grads(lambda *a: reference(*(t.double() for t in a)), q, k, v, g, g)
        same = branches_and_grads(reference, q, k, v, g, g)
        self.exact = exact
        self.same_err = [
            (s.double() - e).abs().max().item() for s, e in zip(same, exact, strict=True)
        ]
        self.inputs = [t.reshape(4, n, 128) for t in (q, k, v, g)]
        self.idx = routing.indices.reshape(4, -1, routing.indices.shape[-1]).int().contiguous()
        mode = LINEAR_ALL if scope == "all" else LINEAR_MARGINAL
        self.settings = KernelSettings(blkq, 64, FMAP_CODES["softmax"], mode)

    def __call__(self, fwd=None, dq=None, dkdv=None, phik=True, split=None) -> bool:
        q, k, v, g = self.inputs
        outs, _, bwd = variant_run(q, k, v, g, self.idx, self.settings, fwd, dq, dkdv, phik, split)
        kern = [outs[0], outs[1], *bwd()]
        return all(
            (t.reshape(e.shape).double() - e).abs().max().item()
            <= 2 * s + 1e-3 * e.abs().max().item()
            for t, e, s in zip(kern, self.exact, self.same_err, strict=True)
        )
