"""Runs SLA's Triton kernels under the Triton interpreter on CPU and prints the errors as JSON.

Started by test_triton_interpreter.py in a subprocess, because TRITON_INTERPRET must be set before
triton is first imported. For each case it reports, per output and gradient, the max abs error of
the kernel (float16 compute) and of the reference run in float16, both against the reference in
float64 on the same routing, plus whether the Triton router chose the reference router's blocks.
"""

from __future__ import annotations

import json
import os
import sys

# Importing this module has no side effects (the test reads CASES); running it sets the interpreter.

# name: (B, H, N, d, config)
CASES = {
    "ragged_softmax": (1, 2, 100, 32, dict(topk=0.3, blkq=32, blkk=16, linear_scope="marginal")),
    "blkq128_ragged": (1, 1, 150, 16, dict(topk=0.4, blkq=128, blkk=32)),
    "n_below_one_block": (1, 2, 11, 16, dict(topk=0.5, blkq=16, blkk=16)),
    "elu_d64": (
        1,
        1,
        64,
        64,
        dict(topk=0.25, blkq=16, blkk=16, feature_map="elu", linear_scope="marginal"),
    ),
    "relu_scope_all": (
        2,
        1,
        70,
        16,
        dict(topk=0.3, blkq=16, blkk=16, feature_map="relu", linear_scope="all"),
    ),
    "negligible_kl": (
        1,
        2,
        90,
        16,
        dict(topk=0.2, blkq=16, blkk=16, kl=0.3, linear_scope="marginal"),
    ),
    "negligible_blkq128": (
        1,
        1,
        200,
        16,
        dict(topk=0.25, blkq=128, blkk=16, kl=0.25, linear_scope="marginal"),
    ),
    "negligible_scope_all": (
        1,
        1,
        64,
        16,
        dict(topk=0.25, blkq=16, blkk=16, kl=0.5, linear_scope="all"),
    ),
    "all_critical": (1, 1, 48, 16, dict(topk=1.0, blkq=16, blkk=16, linear_scope="marginal")),
    "sparse_only_none": (1, 2, 80, 16, dict(topk=0.25, blkq=16, blkk=16, linear_scope="none")),
}
NAMES = ["o_sparse", "o_linear", "dq", "dk", "dv"]


def _run(fn, q, k, v, g_s, g_l):
    import torch

    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    torch.autograd.backward([out.o_sparse, out.o_linear], [g_s.to(q.dtype), g_l.to(q.dtype)])
    return out, [out.o_sparse, out.o_linear, q.grad, k.grad, v.grad]


def run_case(b: int, h: int, n: int, d: int, settings: dict, seed: int = 0) -> dict:
    import torch

    from sla_kernel_glue import SLAConfig, route, sla_reference
    from sla_kernel_glue.triton_kernels import sla_triton

    cfg = SLAConfig(**settings)
    gen = torch.Generator().manual_seed(seed)
    q, k, v, g_s, g_l = (torch.randn((b, h, n, d), generator=gen).half() for _ in range(5))
    routing = route(q.double(), k.double(), cfg)
    _, exact = _run(
        lambda *a: sla_reference(*(t.double() for t in a), config=cfg, routing=routing),
        q,
        k,
        v,
        g_s,
        g_l,
    )
    _, same = _run(lambda *a: sla_reference(*a, config=cfg, routing=routing), q, k, v, g_s, g_l)
    out, kern = _run(lambda *a: sla_triton(*a, config=cfg), q, k, v, g_s, g_l)
    result = {
        "same_blocks": bool(torch.equal(out.routing.indices, routing.indices)),
        "dtypes": [str(t.dtype) for t in kern],
    }
    for name, e, s, t in zip(NAMES, exact, same, kern, strict=True):
        result[name] = {
            "kernel": (t.double() - e).abs().max().item(),
            "ref_fp16": (s.double() - e).abs().max().item(),
            "scale": e.abs().max().item(),
            "finite": bool(torch.isfinite(t).all()),
        }
    return result


def main(names: list[str]) -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    print(json.dumps({name: run_case(*CASES[name]) for name in names}))


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
