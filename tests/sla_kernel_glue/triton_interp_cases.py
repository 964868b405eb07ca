"""Runs SLA's Triton kernels under the Triton interpreter on CPU and prints the errors as JSON.

Started by test_triton_interpreter.py in a subprocess (python -m tests.sla_kernel_glue.triton_interp_cases
from the repository root), because TRITON_INTERPRET must be set before triton is first imported. For each case it reports, per output and gradient, the max abs error of
the kernel (float16 compute) and of the reference run in float16, both against the reference in
float64 on the same routing, plus whether the Triton router chose router.route's blocks.
"""

from __future__ import annotations

import json
import os
import sys

from .kernel_errors import kernel_errors

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


def run_case(b: int, h: int, n: int, d: int, settings: dict, seed: int = 0) -> dict:
    import torch

    from sla_kernel_glue import SLAConfig, route
    from sla_kernel_glue.triton_backend import sla_triton

    cfg = SLAConfig(**settings)
    gen = torch.Generator().manual_seed(seed)
    q, k, v, g_s, g_l = (torch.randn((b, h, n, d), generator=gen).half() for _ in range(5))
    routing = route(q.double(), k.double(), cfg)
    return kernel_errors(lambda *a: sla_triton(*a, config=cfg), q, k, v, g_s, g_l, cfg, routing)


def main(names: list[str]) -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    print(json.dumps({name: run_case(*CASES[name]) for name in names}))


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
