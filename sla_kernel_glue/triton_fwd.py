"""Triton forward of SLA: the linear-state prologue and the fused sparse + linear kernel.

Layout: q, k, v, outputs are contiguous (B*H, N, D) in the compute dtype (fp16 or bf16);
statistics are float32. All accumulators are float32.

The linear branch uses "total minus critical" (sla-algorithm.md, step 4) without ever building a
per-block state h_j: for a critical block j, phi(Q_i) h_j = (phi(Q_i) phi(K_j)^T) V_j, which has
the shape of attention, so the fused kernel subtracts it in the same loop that computes the sparse
branch on K_j, V_j. The totals H = sum_j h_j and Z = sum_j z_j come from the prologue, computed from
phi(K) rounded to the compute dtype exactly as the loop rounds it (phi_rows), so the subtraction
cancels consistently. phi(K) is recomputed from each K tile, never stored: a (B*H, N, D) copy of it
would cost as much memory as K itself.
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
    int32; lse (log2 units), den: (B*H, N) float32; h_hi, h_lo: (B*H, D, D) in the compute dtype
    (H = h_hi + h_lo); ztot: (B*H, D) float32.
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
    h_hi: torch.Tensor
    h_lo: torch.Tensor
    ztot: torch.Tensor


def tune_configs(options: list[tuple[int, int]]) -> list[triton.Config]:
    """(num_warps, num_stages) options; one config under the interpreter (each one is run)."""
    if INTERPRET:
        options = options[:1]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in options]


@triton.jit
def phi_fwd(x, FMAP: tl.constexpr):
    """Feature map on a float32 (rows, D) tile: softmax over D, elu(x)+1 or relu."""
    if FMAP == 0:
        e = tl.exp(x - tl.max(x, 1)[:, None])
        return e / tl.sum(e, 1)[:, None]
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
def _linear_totals_kernel(
    K, V, HPART, ZPART,
    N, CHUNK,
    D: tl.constexpr, BLK: tl.constexpr, FMAP: tl.constexpr,
):  # fmt: skip
    """Per-chunk partial sums of phi(K)^T V and phi(K), with phi(K) rounded as by phi_rows."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    n_chunks = tl.num_programs(0)
    offs_d = tl.arange(0, D)
    base = bh * N * D
    h = tl.zeros((D, D), dtype=tl.float32)
    z = tl.zeros((D,), dtype=tl.float32)
    for r0 in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, N), BLK):
        offs_n = r0 + tl.arange(0, BLK)
        valid = offs_n < N
        ptr = base + offs_n[:, None] * D + offs_d[None, :]
        k = tl.load(K + ptr, mask=valid[:, None], other=0.0)
        v = tl.load(V + ptr, mask=valid[:, None], other=0.0)
        pk = phi_rows(k, valid, FMAP)
        h += tl.dot(tl.trans(pk), v)
        z += tl.sum(pk.to(tl.float32), 0)
    part = bh * n_chunks + c
    tl.store(HPART + part * D * D + offs_d[:, None] * D + offs_d[None, :], h)
    tl.store(ZPART + part * D + offs_d, z)


@triton.autotune(
    configs=tune_configs([(4, 2), (8, 2), (4, 3), (8, 3), (8, 1)]),
    key=["D", "BQ", "BK", "LINEAR", "FMAP", "HAS_NEG"],
)
@triton.jit
def _sla_fwd_kernel(
    Q, K, V, IDX, NIDX, HHI, HLO, ZTOT,
    OS, OL, LSE, DEN,
    N, T_M, KC, KN, qk_scale, eps,
    D: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
    LINEAR: tl.constexpr, FMAP: tl.constexpr, HAS_NEG: tl.constexpr,
):  # fmt: skip
    """One query block: online softmax over its critical key blocks, and the linear branch."""
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = i * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, D)
    qvalid = offs_m < N
    base = bh * N * D
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=qvalid[:, None], other=0.0)
    if LINEAR != 0:
        phiq = phi_rows(q, qvalid, FMAP)
    m_i = tl.full((BQ,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BQ,), dtype=tl.float32)
    acc = tl.zeros((BQ, D), dtype=tl.float32)
    acc_l = tl.zeros((BQ, D), dtype=tl.float32)
    den_sub = tl.zeros((BQ,), dtype=tl.float32)
    idx_row = IDX + (bh * T_M + i) * KC
    for t in range(0, KC):
        j = tl.load(idx_row + t)
        offs_n = j * BK + tl.arange(0, BK)
        kvalid = offs_n < N
        kv_ptr = base + offs_n[:, None] * D + offs_d[None, :]
        k = tl.load(K + kv_ptr, mask=kvalid[:, None], other=0.0)
        v = tl.load(V + kv_ptr, mask=kvalid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where(kvalid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
        if LINEAR == 1:
            pk = phi_rows(k, kvalid, FMAP)
            a = tl.dot(phiq, tl.trans(pk))
            den_sub += tl.sum(a, 1)
            acc_l += tl.dot(a.to(v.dtype), v)
    if LINEAR == 1 and HAS_NEG:
        # Negligible blocks (kl > 0) are skipped by both branches: subtract them from the totals.
        nidx_row = NIDX + (bh * T_M + i) * KN
        for t in range(0, KN):
            j = tl.load(nidx_row + t)
            offs_n = j * BK + tl.arange(0, BK)
            kvalid = offs_n < N
            kv_ptr = base + offs_n[:, None] * D + offs_d[None, :]
            k = tl.load(K + kv_ptr, mask=kvalid[:, None], other=0.0)
            v = tl.load(V + kv_ptr, mask=kvalid[:, None], other=0.0)
            pk = phi_rows(k, kvalid, FMAP)
            a = tl.dot(phiq, tl.trans(pk))
            den_sub += tl.sum(a, 1)
            acc_l += tl.dot(a.to(v.dtype), v)
    o_s = acc / l_i[:, None]
    out_ptr = base + offs_m[:, None] * D + offs_d[None, :]
    tl.store(OS + out_ptr, o_s.to(OS.dtype.element_ty), mask=qvalid[:, None])
    tl.store(LSE + bh * N + offs_m, m_i + tl.log2(l_i), mask=qvalid)
    if LINEAR != 0:
        hp = bh * D * D + offs_d[:, None] * D + offs_d[None, :]
        num = tl.dot(phiq, tl.load(HHI + hp)) + tl.dot(phiq, tl.load(HLO + hp)) - acc_l
        ztot = tl.load(ZTOT + bh * D + offs_d)
        den = tl.sum(phiq.to(tl.float32) * ztot[None, :], 1) - den_sub + eps
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
    k: torch.Tensor, v: torch.Tensor, blkk: int, fmap: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 totals H (B*H, D, D), Z (B*H, D) of phi(K)^T V and phi(K) over all keys."""
    bh, n, d = k.shape
    blk = min(blkk, 64)
    chunk = blk * max(1, triton.cdiv(triton.cdiv(n, blk), 16))  # about 16 chunks per head
    n_chunks = triton.cdiv(n, chunk)
    hpart = torch.empty((bh, n_chunks, d, d), dtype=torch.float32, device=k.device)
    zpart = torch.empty((bh, n_chunks, d), dtype=torch.float32, device=k.device)
    _linear_totals_kernel[(n_chunks, bh)](
        k, v, hpart, zpart, n, chunk, D=d, BLK=blk, FMAP=fmap,
        num_warps=8 if d >= 128 else 4,
    )  # fmt: skip
    return hpart.sum(dim=1), zpart.sum(dim=1)


def sla_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    neg_indices: torch.Tensor,
    settings: KernelSettings,
) -> tuple[torch.Tensor, ...]:
    """Launch the forward on (B*H, N, D) tensors; indices (B*H, T_m, k) int32 (critical blocks),
    neg_indices (B*H, T_m, n_neg) int32 (negligible blocks; n_neg may be 0).

    Returns o_s, o_l, lse (log2 units, float32), den (float32), H hi, H lo, Z: ForwardState's
    fields after the inputs. The linear branch's denominator adds feature_maps.LINEAR_EPS.
    """
    bh, n, d = q.shape
    t_m, kc = indices.shape[1], indices.shape[2]
    kn = neg_indices.shape[2]
    nidx = neg_indices if kn > 0 else indices  # never read without negligible blocks
    if settings.linear_mode == LINEAR_EMPTY:  # sparse only: the kernels never read the states
        ztot = torch.zeros((bh, d), dtype=torch.float32, device=q.device)
        h_hi, h_lo = q.new_zeros((bh, d, d)), q.new_zeros((bh, d, d))
    else:
        htot, ztot = linear_totals(k, v, settings.blkk, settings.fmap)
        h_hi, h_lo = split_hi_lo(htot, q.dtype)
    o_s = torch.empty_like(q)
    o_l = torch.empty_like(q)
    lse = torch.empty((bh, n), dtype=torch.float32, device=q.device)
    den = torch.empty((bh, n), dtype=torch.float32, device=q.device)
    _sla_fwd_kernel[(t_m, bh)](
        q, k, v, indices, nidx, h_hi, h_lo, ztot,
        o_s, o_l, lse, den,
        n, t_m, kc, kn, d**-0.5 * LOG2E, LINEAR_EPS,
        D=d, BQ=settings.blkq, BK=settings.blkk, LINEAR=settings.linear_mode,
        FMAP=settings.fmap, HAS_NEG=kn > 0,
    )  # fmt: skip
    return o_s, o_l, lse, den, h_hi, h_lo, ztot
