"""The learned router and the alpha mix through SLA's Triton kernels under the Triton interpreter,
against float64; prints JSON. Started by test_learned_interpreter.py in a subprocess (python -m
tests.sla_kernel_glue.learned_interp_cases from the repository root): TRITON_INTERPRET must be set
before triton is first imported.

Per case: whether the Triton router's selection through the learned projections is the
reference's (learned_route in float64 and in float32); SLA's output (the kernels' branches on
that selection, mixed by alpha as functional.combine_branches mixes them) against the reference in float64
on the same selection, and against the reference in float16 (style.md's tolerance rule), for the
output and the gradients of q, k, v, alpha and proj_l. The router's own gradient is the
reference's alone (test_learned_router.py checks it against a dense float64 oracle).
"""

from __future__ import annotations

import json
import os
import sys

# name: (B, H, N, d, config); router learned, mix alpha
CASES = {
    "ragged_marginal": (1, 2, 100, 32, dict(topk=0.3, blkq=32, blkk=16, linear_scope="marginal")),
    "scope_all": (2, 1, 80, 16, dict(topk=0.4, blkq=16, blkk=16, linear_scope="all")),
    "negligible_kl": (1, 2, 96, 16, dict(topk=0.25, blkq=16, blkk=16, kl=0.25, linear_scope="marginal")),
}  # fmt: skip
NAMES = ["out", "dq", "dk", "dv", "dalpha", "dproj_l"]


def learned_parts(d: int, gen):
    import torch

    eye = torch.eye(d)
    wq = eye + 0.4 * torch.randn((d, d), generator=gen)
    wk = eye + 0.4 * torch.randn((d, d), generator=gen)
    alpha = torch.rand((d,), generator=gen) * 0.6 + 0.2
    w = 0.3 * torch.randn((d, d), generator=gen)
    bias = 0.1 * torch.randn((d,), generator=gen)
    return wq, wk, alpha, w, bias


def outputs_and_grads(cfg, q, k, v, g, parts, dtype, routing=None):
    """[out, dq, dk, dv, dalpha, dproj_l] of SLA in `dtype`, mixed by functional.combine_branches:
    the branches from the kernels (sla_triton with the learned router's weights, no routing
    given) or from the reference on `routing`."""

    from sla_kernel_glue import sla_reference
    from sla_kernel_glue.functional import combine_branches
    from sla_kernel_glue.triton_backend import sla_triton

    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    wq, wk, alpha, w, bias = parts
    alpha = alpha.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    if routing is None:
        outs = sla_triton(q, k, v, config=cfg, use_bf16=False, router_weights=(wq, wk))
    else:
        outs = sla_reference(q, k, v, config=cfg, routing=routing)
    out = combine_branches(outs, cfg, w, bias, alpha, dtype)
    out.backward(g.to(out.dtype))
    return [out, q.grad, k.grad, v.grad, alpha.grad, w.grad]


def run_case(b: int, h: int, n: int, d: int, settings: dict, seed: int = 0) -> dict:
    import torch

    from sla_kernel_glue import SLAConfig
    from sla_kernel_glue.learned_router import learned_route
    from sla_kernel_glue.triton_router import route_triton

    cfg = SLAConfig(**settings, router="learned", mix="alpha", backend="triton")
    gen = torch.Generator().manual_seed(seed)
    q, k, v, g = (torch.randn((b, h, n, d), generator=gen).half() for _ in range(4))
    parts = learned_parts(d, gen)
    wq, wk = parts[:2]
    routing = learned_route(q.double(), k.double(), cfg, wq, wk)
    kernel_routing = route_triton(q, k, cfg, (wq, wk))
    result = {
        "same_blocks_fp64": bool(torch.equal(kernel_routing.indices, routing.indices)),
        "same_blocks_fp32": bool(
            torch.equal(kernel_routing.indices, learned_route(q, k, cfg, wq, wk).indices)
        ),
    }
    eye = torch.eye(d)  # at the identity, the learned router's blocks are the fixed router's
    fixed = route_triton(q, k, cfg.replace(router="fixed"))
    result["identity_is_fixed"] = bool(
        torch.equal(route_triton(q, k, cfg, (eye, eye)).critical, fixed.critical)
    )
    kern = outputs_and_grads(cfg, q, k, v, g, parts, torch.float16)
    exact = outputs_and_grads(cfg, q, k, v, g, parts, torch.float64, routing)
    same = outputs_and_grads(cfg, q, k, v, g, parts, torch.float16, routing)
    for name, t, e, s in zip(NAMES, kern, exact, same, strict=True):
        result[name] = {
            "kernel": (t.double() - e).abs().max().item(),
            "reference": (s.double() - e).abs().max().item(),
            "scale": e.abs().max().item(),
            "finite": bool(torch.isfinite(t).all()),
        }
    return result


def main(names: list[str]) -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    print(json.dumps({name: run_case(*CASES[name]) for name in names}))


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
