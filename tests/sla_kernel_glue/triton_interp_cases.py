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


# name: (N, blkq, linear_scope); B 1, H 2, d 16, blkk 16, topk 0.4 (3 of 6-7 key blocks: one pair
# and a single block left over)
LAUNCH_CASES = {
    "even_marginal": (96, 16, "marginal"),
    "ragged_all": (100, 16, "all"),
    "blkq32_marginal_ragged": (100, 32, "marginal"),
}


def launch_variant_errors(n: int, blkq: int, scope: str) -> dict:
    """Max abs differences of the fused kernels' outputs and gradients under each LaunchConfig
    (paired tiles, the phi(K) buffer or not, dK/dV in one pass or two) from the first autotune
    config, and their scale."""
    import torch

    from sla_kernel_glue import SLAConfig
    from sla_kernel_glue.triton_backend import linear_mode
    from sla_kernel_glue.triton_bwd import sla_backward
    from sla_kernel_glue.triton_fwd import (
        FMAP_CODES,
        ForwardState,
        KernelSettings,
        LaunchConfig,
        sla_forward,
    )
    from sla_kernel_glue.triton_router import route_for_kernels

    cfg = SLAConfig(topk=0.4, blkq=blkq, blkk=16, linear_scope=scope)
    gen = torch.Generator().manual_seed(1)
    q, k, v, g_s, g_l = (torch.randn((1, 2, n, 16), generator=gen).half() for _ in range(5))
    _, idx = route_for_kernels(q, k, cfg)
    settings = KernelSettings(blkq, 16, FMAP_CODES["softmax"], linear_mode(cfg, idx.shape[-1], 7))
    q, k, v, g_s, g_l = (t.reshape(2, n, 16) for t in (q, k, v, g_s, g_l))
    no_neg = idx[..., :0]

    def run(launch: LaunchConfig, phik: bool, split: bool = True) -> list:
        outs = sla_forward(q, k, v, idx, no_neg, settings, launch, phik)
        saved = ForwardState(q, k, v, idx, no_neg, *outs)
        grads = sla_backward(g_s, g_l, saved, settings, launch, launch, phik, split)
        return [*outs[:2], *grads]

    base = run(LaunchConfig(4, 2, 1), phik=False)
    result = {"scale": max(t.abs().max().item() for t in base)}
    variants = (
        ("pair", LaunchConfig(4, 2, 2), False, True),
        ("phik", None, True, True),
        ("fused_dkdv", None, False, False),  # the marginal dK/dV in one pass instead of two
    )
    for name, launch, phik, split in variants:
        outs = run(launch or LaunchConfig(4, 2, 1), phik, split)
        result[name] = max(
            (a.float() - b.float()).abs().max().item() for a, b in zip(outs, base, strict=True)
        )
    return result


def main_launch() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    print(json.dumps({name: launch_variant_errors(*c) for name, c in LAUNCH_CASES.items()}))


if __name__ == "__main__":
    if sys.argv[1:] == ["--launch"]:
        main_launch()
    else:
        main(sys.argv[1:] or list(CASES))
