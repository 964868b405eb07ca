"""Launch variants of SLA's fused kernels, each checked against the float64 reference at a real
size (sla_checks.VariantCheck) and then timed (needs a CUDA GPU)."""

from __future__ import annotations

import dataclasses
import json

import torch

from sla_kernel_glue.triton_bwd import bwd_prologue
from sla_kernel_glue.triton_fwd import (
    FMAP_CODES,
    LINEAR_ALL,
    ForwardState,
    KernelSettings,
    LaunchConfig,
    StreamLaunch,
    linear_totals,
    sla_forward,
)
from sla_kernel_glue.triton_router import pool_blocks, select_topk

from .sla_checks import VariantCheck, variant_run
from .sla_common import bench, kernel_inputs

# Launch variants the explore mode checks and times: (num_warps, num_stages, pair).
FWD_VARIANTS = [(4, 2, 1), (4, 3, 1), (8, 2, 1), (4, 2, 2), (4, 3, 2), (8, 2, 2)]
BWD_VARIANTS = [(4, 2, 1), (8, 2, 1), (4, 2, 2), (8, 2, 2)]
Q128_VARIANTS = [(8, 2, 1), (8, 3, 1)]


def _trials(scope: str, blkq: int) -> list[tuple]:
    """(kernel timed, fwd, dq, dkdv launches, phik buffer): each kernel's variants, the others fixed."""
    variants = Q128_VARIANTS if blkq == 128 else FWD_VARIANTS
    bwd_variants = Q128_VARIANTS if blkq == 128 else BWD_VARIANTS
    fixed = LaunchConfig(*bwd_variants[0])
    trials = [("fwd", LaunchConfig(*w), fixed, fixed, True, None) for w in variants]
    if scope == "marginal":
        trials.append(("fwd_no_phik", LaunchConfig(*variants[0]), fixed, fixed, False, None))
    trials += [("dq", fixed, LaunchConfig(*w), fixed, True, None) for w in bwd_variants]
    trials += [("dkdv", fixed, fixed, LaunchConfig(*w), True, None) for w in bwd_variants]
    return trials


def _explore_trial(check: VariantCheck, inputs: list, trial: tuple) -> dict:
    kind, fl, dl, kl, phik, split = trial
    q, k, v, g, idx = inputs
    launch = fl if kind.startswith("fwd") else dl if kind == "dq" else kl
    row = {"kernel": kind, "launch": dataclasses.asdict(launch), "phik": phik, "split": split}
    try:
        row["ok"] = check(fl, dl, kl, phik, split)
        if kind.startswith("fwd"):
            row["ms"] = bench(lambda: variant_run(q, k, v, g, idx, check.settings, fl, phik=phik))
        else:
            bwd = variant_run(q, k, v, g, idx, check.settings, fl, dl, kl, phik, split)[2]
            row["ms"] = bench(bwd)
    except Exception as exc:  # recorded: a variant that does not compile or run
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def extra_trials(scope: str, blkq: int) -> list[tuple]:
    """A second round: one pipeline stage (more programs per SM), three for the backward."""
    if blkq != 64:
        return []
    fixed = LaunchConfig(4, 2, 1)
    extra = [(4, 1, 1), (4, 3, 1), (8, 3, 1)] if scope == "marginal" else [(4, 1, 1), (4, 3, 1)]
    trials = [("fwd", LaunchConfig(4, 1, 1), fixed, fixed, True, None)]
    trials += [("dq", fixed, LaunchConfig(*w), fixed, True, None) for w in extra[:2]]
    trials += [("dkdv", fixed, fixed, LaunchConfig(*w), True, None) for w in extra]
    return trials


def split_trials(scope: str, blkq: int) -> list[tuple]:
    """The marginal dK/dV in one pass against two (sparse, then linear), the backward op timed with
    the forward and dQ at their fastest measured launches."""
    if scope != "marginal":
        return []
    fixed = LaunchConfig(4, 1, 1) if blkq == 64 else LaunchConfig(8, 2, 1)
    trials = [("dkdv", fixed, fixed, LaunchConfig(8, 3, 1), True, False)]
    for w in [(4, 2, 1), (4, 3, 1), (8, 2, 1), (8, 3, 1)]:
        trials.append(("dkdv", fixed, fixed, LaunchConfig(*w), True, True))
    return trials


# The first is the default (stream_launch); the totals are float32 atomics, so more chunks a head
# no longer cost a reduction afterwards.
STREAM_VARIANTS = [
    StreamLaunch(64, 4, 3, 16),
    StreamLaunch(64, 4, 3, 32),
    StreamLaunch(64, 4, 3, 64),
    StreamLaunch(64, 8, 3, 32),
    StreamLaunch(128, 8, 2, 32),
]


def explore_streams(n: int, b: int, h: int) -> list[dict]:
    """The router's top-k (float sort against int64 keys) and the two linear prologues under each
    StreamLaunch, each against the first variant's result (the default, which the checks cover)."""
    _, q, k, v, g, idx, _ = kernel_inputs(n, 0.05, 64, b, h, 128)
    pq, pk = pool_blocks(q, k, 64, 64)
    scores = torch.bmm(pq, pk.transpose(1, 2))
    kc = idx.shape[-1]
    rows = []
    base = select_topk(scores, kc, float_sort=False)[0]
    for fs in (False, True):
        same = torch.equal(select_topk(scores, kc, float_sort=fs)[0], base)
        ms = bench(lambda fs=fs: select_topk(scores, kc, float_sort=fs))
        rows.append({"N": n, "kernel": "topk", "float_sort": fs, "ok": same, "ms": ms})
    settings = KernelSettings(64, 64, FMAP_CODES["softmax"], LINEAR_ALL)
    saved = ForwardState(
        q, k, v, idx, idx[..., :0], *sla_forward(q, k, v, idx, idx[..., :0], settings)
    )
    fns = {
        "linear_totals": lambda la: linear_totals(k, v, FMAP_CODES["softmax"], launch=la)[:1],
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
            row.update(ok=err <= 1e-5, ms=bench(lambda la=la, fn=fn: fn(la)))
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
        _, q, k, v, g, idx, _ = kernel_inputs(n, topk, blkq, b, h, 128)
        for trial in trials(scope, blkq):
            row = {"scope": scope, "blkq": blkq, "N": n, "topk": topk}
            row.update(_explore_trial(check, [q, k, v, g, idx], trial))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows
