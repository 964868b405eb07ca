"""Triton forward of SLA: the linear-state prologue and the fused sparse + linear kernel.

Layout: q, k, v, outputs are contiguous (B*H, N, D) in the compute dtype (fp16 or bf16);
statistics are float32. All accumulators are float32.

The linear branch uses "total minus critical" (sla-algorithm.md, step 4) without ever building a
per-block state h_j: for a critical block j, phi(Q_i) h_j = (phi(Q_i) phi(K_j)^T) V_j, which has
the shape of attention, so the fused kernel subtracts it in the same loop that computes the sparse
branch on K_j, V_j. The totals H = sum_j h_j and Z = sum_j z_j come from the prologue, computed from
phi(K) rounded to the compute dtype exactly as the loop rounds it (phi_rows), so the subtraction
cancels consistently; its chunks add them by float32 atomics into one (D + 1, D) buffer per head,
which the kernels split into hi + lo 16-bit halves themselves. phi(K) is never kept past the call: scope all needs it only in the prologue;
the marginal scope's loop reads it from a buffer the prologue writes (identical values to
recomputing it per visit, without the exponentials), freed when the forward returns.
"""

# Triton kernels name their pointer arguments in capitals, as the tutorials do.
# ruff: noqa: N803

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .feature_maps import LINEAR_EPS

LOG2E = 1.4426950408889634
FMAP_CODES = {"softmax": 0, "elu": 1, "relu": 2}
# linear_mode: what the linear branch covers.
LINEAR_EMPTY, LINEAR_MARGINAL, LINEAR_ALL = 0, 1, 2
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclasses.dataclass(frozen=True)
class KernelSettings:
    """The integer settings of one call of the SLA kernels (the constexprs they compile for).

    The custom ops (triton_op.py) carry them as one int[], by pack and unpack.
    """

    blkq: int
    blkk: int
    fmap: int  # a FMAP_CODES value
    linear_mode: int  # LINEAR_EMPTY, LINEAR_MARGINAL or LINEAR_ALL

    def pack(self) -> list[int]:
        return [self.blkq, self.blkk, self.fmap, self.linear_mode]

    @classmethod
    def unpack(cls, packed: Sequence[int]) -> KernelSettings:
        blkq, blkk, fmap, linear_mode = packed
        return cls(blkq=blkq, blkk=blkk, fmap=fmap, linear_mode=linear_mode)


class ForwardState(NamedTuple):
    """What the backward needs: the forward's inputs, its outputs and its statistics.

    q, k, v, o_s, o_l: (B*H, N, D) in the compute dtype; indices, neg_indices: (B*H, T_m, *)
    int32; lse (log2 units), den: (B*H, N) float32; totals: (B*H, D + 1, D) float32, the linear
    states H (rows 0..D-1; the kernels split it into hi + lo of the compute dtype, as split_hi_lo
    does) and Z (row D).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    indices: torch.Tensor
    neg_indices: torch.Tensor
    o_s: torch.Tensor
    o_l: torch.Tensor
    lse: torch.Tensor
    den: torch.Tensor
    totals: torch.Tensor


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """How one kernel is launched: warps, pipeline stages and the key blocks per loop step (pair).

    The kernels are autotuned over a few of these; benchmarks pass one explicitly to time it.
    """

    num_warps: int = 4
    num_stages: int = 2
    pair: int = 1  # key (or query) blocks per tile: 2 makes a 64-row tile's loop twice as wide

    def kwargs(self) -> dict[str, int]:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages, "PAIR": self.pair}


@dataclasses.dataclass(frozen=True)
class StreamLaunch:
    """Launch of a kernel that streams every token of a head in chunks (the linear prologues)."""

    blk: int = 64  # rows per loop step
    num_warps: int = 8
    num_stages: int = 3
    chunks: int = 16  # programs per head

    def chunk_rows(self, n: int) -> int:
        return self.blk * max(1, triton.cdiv(triton.cdiv(n, self.blk), self.chunks))


def stream_launch(launch: StreamLaunch | None, d: int) -> StreamLaunch:
    """The given launch, else the default: 64 rows a step, 4 warps, 3 stages, 16 chunks a head
    (measured the fastest of seven for both prologues at d 128, N 8192 and 32768)."""
    return launch or StreamLaunch(num_warps=4)


def tune_configs(options: list[LaunchConfig]) -> list[triton.Config]:
    """Autotune configs from LaunchConfigs; one config under the interpreter (each one is run)."""
    if INTERPRET:
        options = options[:1]
    return [
        triton.Config({"PAIR": o.pair}, num_warps=o.num_warps, num_stages=o.num_stages)
        for o in options
    ]


def prune_by_rows(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Autotune candidates for a BQ-row tile: 8 warps (two warpgroups) for 128 rows, else 4."""
    warps = 8 if kwargs.get("BQ", named_args.get("BQ", 64)) >= 128 else 4
    return [c for c in configs if c.num_warps == warps] or configs[:1]


def kernel_and_kwargs(kernel, launch: LaunchConfig | None):
    """The autotuned kernel, or with an explicit LaunchConfig its plain JIT function and kwargs."""
    if launch is None:
        return kernel, {}
    return kernel.fn, launch.kwargs()


@triton.jit
def phi_fwd(x, FMAP: tl.constexpr):
    """Feature map on a float32 (rows, D) tile: softmax over D, elu(x)+1 or relu."""
    if FMAP == 0:
        e = tl.exp(x - tl.max(x, 1)[:, None])
        return e * (1.0 / tl.sum(e, 1))[:, None]
    elif FMAP == 1:
        return tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    else:
        return tl.maximum(x, 0.0)


@triton.jit
def phi_bwd(x, phi, dphi, FMAP: tl.constexpr):
    """d loss / d x given phi = phi_fwd(x) and d loss / d phi, all float32 (rows, D)."""
    if FMAP == 0:
        return phi * (dphi - tl.sum(dphi * phi, 1)[:, None])
    elif FMAP == 1:
        return dphi * tl.where(x > 0, 1.0, phi)
    else:
        return tl.where(x > 0, dphi, 0.0)


@triton.jit
def phi_rows(x, valid, FMAP: tl.constexpr):
    """phi of a (rows, D) tile in its own dtype, zero on rows that are not valid (past N).

    Every kernel that needs phi(Q) or phi(K) in the compute dtype gets it here, so that the totals
    and the per-block terms subtracted from them are built from identically rounded values.
    """
    return tl.where(valid[:, None], phi_fwd(x.to(tl.float32), FMAP), 0.0).to(x.dtype)


@triton.jit
def block_rows(idx_row, t, N, BK: tl.constexpr, PAIR: tl.constexpr):
    """Token offsets of the PAIR blocks idx_row[t*PAIR : t*PAIR+PAIR] (PAIR*BK rows) and validity."""
    if PAIR == 1:
        offs = tl.load(idx_row + t) * BK + tl.arange(0, BK)
    else:
        r = tl.arange(0, PAIR * BK)
        offs = tl.load(idx_row + t * PAIR + r // BK) * BK + r % BK
    return offs, offs < N


@triton.jit
def load_rows(X, base, offs, valid, D: tl.constexpr, MASKED: tl.constexpr):
    """X[base + offs, :D] as a (rows, D) tile; rows past N are 0 when MASKED."""
    ptr = X + base + offs[:, None] * D + tl.arange(0, D)[None, :]
    if MASKED:
        return tl.load(ptr, mask=valid[:, None], other=0.0)
    return tl.load(ptr)


@triton.jit
def _linear_totals_kernel(
    K, V, TOT, PHIK,
    N, CHUNK,
    D: tl.constexpr, BLK: tl.constexpr, FMAP: tl.constexpr, STORE_PHIK: tl.constexpr,
):  # fmt: skip
    """Per-chunk sums of phi(K)^T V and phi(K), with phi(K) rounded as by phi_rows, added into the
    zeroed totals TOT (float32 atomics); with STORE_PHIK, phi(K) itself too."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, D)
    base = bh * N * D
    h = tl.zeros((D, D), dtype=tl.float32)
    z = tl.zeros((D,), dtype=tl.float32)
    for r0 in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, N), BLK):
        offs_n = r0 + tl.arange(0, BLK)
        valid = offs_n < N
        k = load_rows(K, base, offs_n, valid, D, True)
        v = load_rows(V, base, offs_n, valid, D, True)
        pk = phi_rows(k, valid, FMAP)
        if STORE_PHIK:
            ptr = PHIK + base + offs_n[:, None] * D + offs_d[None, :]
            tl.store(ptr, pk, mask=valid[:, None])
        h += tl.dot(tl.trans(pk), v)
        z += tl.sum(pk.to(tl.float32), 0)
    add_totals(TOT, bh, h, z, D)


@triton.jit
def add_totals(TOT, bh, h, z, D: tl.constexpr):
    """Add one chunk's (D, D) and (D,) float32 sums into the head's (D + 1, D) totals: H in rows
    0..D-1, Z in row D. Atomics: the chunks of a head add in any order, so the float32 totals can
    differ in the last bits between runs."""
    offs_d = tl.arange(0, D)
    head = TOT + bh * (D + 1) * D
    tl.atomic_add(head + offs_d[:, None] * D + offs_d[None, :], h, sem="relaxed")
    tl.atomic_add(head + D * D + offs_d, z, sem="relaxed")


@triton.jit
def load_hi_lo(TOT, bh, dtype: tl.constexpr, D: tl.constexpr):
    """A head's float32 (D, D) total H as hi + lo in a 16-bit dtype (split_hi_lo, in the kernel)."""
    offs_d = tl.arange(0, D)
    h = tl.load(TOT + bh * (D + 1) * D + offs_d[:, None] * D + offs_d[None, :])
    hi = h.to(dtype)
    return hi, (h - hi.to(tl.float32)).to(dtype)


@triton.jit
def load_z(TOT, bh, D: tl.constexpr):
    """A head's float32 (D,) total Z (row D of its totals)."""
    return tl.load(TOT + bh * (D + 1) * D + D * D + tl.arange(0, D))


@triton.jit
def _fwd_visit(
    q, phiq, K, V, PHIK, base, offs_n, kvalid, m_i, l_i, acc, acc_l, den_sub, qk_scale,
    D: tl.constexpr, LINEAR: tl.constexpr, FMAP: tl.constexpr, MASKED: tl.constexpr,
    LOAD_PHIK: tl.constexpr,
):  # fmt: skip
    """One step of the fused loop over a (rows, D) key tile: online softmax, and for the marginal
    linear branch the critical tile's share of the totals."""
    k = load_rows(K, base, offs_n, kvalid, D, MASKED)
    v = load_rows(V, base, offs_n, kvalid, D, MASKED)
    s = tl.dot(q, tl.trans(k))
    if MASKED:
        s = tl.where(kvalid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * qk_scale - m_new[:, None])  # one fused multiply-add per score
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    if LINEAR == 1:
        if LOAD_PHIK:
            pk = load_rows(PHIK, base, offs_n, kvalid, D, MASKED)
        else:
            pk = phi_rows(k, kvalid, FMAP)
        a = tl.dot(phiq, tl.trans(pk))
        den_sub += tl.sum(a, 1)
        acc_l += tl.dot(a.to(v.dtype), v)
    return m_new, l_i, acc, acc_l, den_sub


@triton.jit
def _linear_visit(
    phiq, K, V, base, offs_n, kvalid, acc_l, den_sub, D: tl.constexpr, FMAP: tl.constexpr
):
    """A negligible tile: only its share of the linear totals, to subtract."""
    k = load_rows(K, base, offs_n, kvalid, D, True)
    v = load_rows(V, base, offs_n, kvalid, D, True)
    a = tl.dot(phiq, tl.trans(phi_rows(k, kvalid, FMAP)))
    return acc_l + tl.dot(a.to(v.dtype), v), den_sub + tl.sum(a, 1)


# The fastest launches measured on an H200 (d 128, N 32768): two stages for scope all, one for
# marginal, 8 warps for 128-row tiles; paired key blocks and 8 warps on 64 rows were slower.
FWD_CONFIGS = [
    LaunchConfig(4, 2, 1),
    LaunchConfig(4, 1, 1),
    LaunchConfig(4, 3, 1),
    LaunchConfig(8, 2, 1),
    LaunchConfig(8, 3, 1),
]


@triton.autotune(
    configs=tune_configs(FWD_CONFIGS),
    key=["N", "D", "BQ", "BK", "LINEAR", "FMAP", "HAS_NEG"],
    prune_configs_by={"early_config_prune": prune_by_rows},
)
@triton.jit
def _sla_fwd_kernel(
    Q, K, V, IDX, NIDX, TOT, PHIK,
    OS, OL, LSE, DEN,
    N, T_M, KC, KN, qk_scale, eps,
    D: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
    LINEAR: tl.constexpr, FMAP: tl.constexpr, HAS_NEG: tl.constexpr,
    MASKED: tl.constexpr, LOAD_PHIK: tl.constexpr, PAIR: tl.constexpr,
):  # fmt: skip
    """One query block: online softmax over its critical key blocks, and the linear branch."""
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = i * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, D)
    qvalid = offs_m < N
    base = bh * N * D
    q = load_rows(Q, base, offs_m, qvalid, D, True)
    phiq = phi_rows(q, qvalid, FMAP) if LINEAR != 0 else q
    m_i = tl.full((BQ,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BQ,), dtype=tl.float32)
    acc = tl.zeros((BQ, D), dtype=tl.float32)
    acc_l = tl.zeros((BQ, D), dtype=tl.float32)
    den_sub = tl.zeros((BQ,), dtype=tl.float32)
    idx_row = IDX + (bh * T_M + i) * KC
    for t in range(0, KC // PAIR):
        offs_n, kvalid = block_rows(idx_row, t, N, BK, PAIR)
        m_i, l_i, acc, acc_l, den_sub = _fwd_visit(
            q, phiq, K, V, PHIK, base, offs_n, kvalid, m_i, l_i, acc, acc_l, den_sub, qk_scale,
            D, LINEAR, FMAP, MASKED, LOAD_PHIK,
        )  # fmt: skip
    for t in range((KC // PAIR) * PAIR, KC):  # the blocks left over from the pairs
        offs_n, kvalid = block_rows(idx_row, t, N, BK, 1)
        m_i, l_i, acc, acc_l, den_sub = _fwd_visit(
            q, phiq, K, V, PHIK, base, offs_n, kvalid, m_i, l_i, acc, acc_l, den_sub, qk_scale,
            D, LINEAR, FMAP, MASKED, LOAD_PHIK,
        )  # fmt: skip
    if LINEAR == 1 and HAS_NEG:
        # Negligible blocks (kl > 0) are skipped by both branches: subtract them from the totals.
        nidx_row = NIDX + (bh * T_M + i) * KN
        for t in range(0, KN):
            offs_n, kvalid = block_rows(nidx_row, t, N, BK, 1)
            acc_l, den_sub = _linear_visit(
                phiq, K, V, base, offs_n, kvalid, acc_l, den_sub, D, FMAP
            )
    out_ptr = base + offs_m[:, None] * D + offs_d[None, :]
    tl.store(OS + out_ptr, (acc / l_i[:, None]).to(OS.dtype.element_ty), mask=qvalid[:, None])
    tl.store(LSE + bh * N + offs_m, m_i + tl.log2(l_i), mask=qvalid)
    if LINEAR != 0:
        h_hi, h_lo = load_hi_lo(TOT, bh, phiq.dtype, D)
        num = tl.dot(phiq, h_hi) + tl.dot(phiq, h_lo) - acc_l
        den = tl.sum(phiq.to(tl.float32) * load_z(TOT, bh, D)[None, :], 1) - den_sub + eps
        tl.store(OL + out_ptr, (num / den[:, None]).to(OL.dtype.element_ty), mask=qvalid[:, None])
        tl.store(DEN + bh * N + offs_m, den, mask=qvalid)
    else:
        tl.store(OL + out_ptr, tl.zeros((BQ, D), dtype=OL.dtype.element_ty), mask=qvalid[:, None])
        tl.store(DEN + bh * N + offs_m, tl.full((BQ,), 1.0, dtype=tl.float32), mask=qvalid)


def split_hi_lo(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 x as hi + lo in a 16-bit dtype, so that two 16-bit matmuls keep ~16 mantissa bits."""
    hi = x.to(dtype)
    lo = (x - hi.float()).to(dtype)
    return hi, lo


def linear_totals(
    k: torch.Tensor,
    v: torch.Tensor,
    fmap: int,
    store_phik: bool = False,
    launch: StreamLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The float32 totals (B*H, D + 1, D) over all keys: phi(K)^T V in rows 0..D-1, the column sums
    of phi(K) in row D; with store_phik also phi(K) (B*H, N, D) in k's dtype, else None."""
    bh, n, d = k.shape
    launch = stream_launch(launch, d)
    chunk = launch.chunk_rows(n)
    totals = torch.zeros((bh, d + 1, d), dtype=torch.float32, device=k.device)
    phik = torch.empty_like(k) if store_phik else None
    _linear_totals_kernel[(triton.cdiv(n, chunk), bh)](
        k, v, totals, phik, n, chunk, D=d, BLK=launch.blk, FMAP=fmap, STORE_PHIK=store_phik,
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )  # fmt: skip
    return totals, phik


# The marginal forward reads phi(K) from a transient buffer instead of recomputing it per visit.
MARGINAL_PHIK_BUFFER = True


def sla_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    neg_indices: torch.Tensor,
    settings: KernelSettings,
    launch: LaunchConfig | None = None,
    phik_buffer: bool = MARGINAL_PHIK_BUFFER,
) -> tuple[torch.Tensor, ...]:
    """Launch the forward on (B*H, N, D) tensors; indices (B*H, T_m, k) int32 (critical blocks),
    neg_indices (B*H, T_m, n_neg) int32 (negligible blocks; n_neg may be 0). launch: autotuned
    when None; phik_buffer: the marginal scope reads phi(K) from a buffer (freed on return).

    Returns o_s, o_l, lse (log2 units, float32), den (float32), the totals: ForwardState's
    fields after the inputs. The linear branch's denominator adds feature_maps.LINEAR_EPS.
    """
    bh, n, d = q.shape
    t_m, kc = indices.shape[1], indices.shape[2]
    kn = neg_indices.shape[2]
    nidx = neg_indices if kn > 0 else indices  # never read without negligible blocks
    load_phik = phik_buffer and settings.linear_mode == LINEAR_MARGINAL
    phik = None
    if settings.linear_mode == LINEAR_EMPTY:  # sparse only: the kernels never read the states
        totals = torch.zeros((bh, d + 1, d), dtype=torch.float32, device=q.device)
    else:
        totals, phik = linear_totals(k, v, settings.fmap, load_phik)
    o_s = torch.empty_like(q)
    o_l = torch.empty_like(q)
    lse = torch.empty((bh, n), dtype=torch.float32, device=q.device)
    den = torch.empty((bh, n), dtype=torch.float32, device=q.device)
    kernel, kwargs = kernel_and_kwargs(_sla_fwd_kernel, launch)
    kernel[(t_m, bh)](
        q, k, v, indices, nidx, totals, k if phik is None else phik,
        o_s, o_l, lse, den,
        n, t_m, kc, kn, d**-0.5 * LOG2E, LINEAR_EPS,
        D=d, BQ=settings.blkq, BK=settings.blkk, LINEAR=settings.linear_mode,
        FMAP=settings.fmap, HAS_NEG=kn > 0, MASKED=n % settings.blkk != 0, LOAD_PHIK=load_phik,
        **kwargs,
    )  # fmt: skip
    return o_s, o_l, lse, den, totals
