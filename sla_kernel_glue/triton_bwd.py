"""Triton backward of SLA: a prologue over all tokens, then dQ (per query block, over its critical
key blocks) and dK/dV (per key block, over the query blocks that chose it).

Formulas (sla-algorithm.md, Backward), written so that the linear branch again needs no per-block
d x d state: with qt = phi(Q) / den and D_l = rowsum(dO_l * O_l),
  dphi(Q_i) den = dO_l,i H^T - D_l,i Z^T - sum_{j crit} (dO_l,i V_j^T - D_l,i) phi(K_j)
  dV_j     += phi(K_j) dH_tot - sum_{i: j crit} (phi(K_j) qt_i^T) dO_l,i
  dphi(K_j) = V_j dH_tot^T + dZ_tot - sum_{i: j crit} (V_j dO_l,i^T - D_l,i) qt_i
where dH_tot = sum over all query tokens qt^T dO_l and dZ_tot = -sum qt D_l.

Neither phi(K) nor qt is stored: each kernel recomputes them from its K, Q (and den) tiles, by
phi_rows and qt_rows, the same arithmetic the prologues use for the totals (no (B*H, N, D)
temporaries beyond dq, dk, dv).
"""

# Triton kernels name their pointer arguments in capitals, as the tutorials do.
# ruff: noqa: N803

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_fwd import (
    LOG2E,
    ForwardState,
    KernelSettings,
    phi_bwd,
    phi_fwd,
    phi_rows,
    split_hi_lo,
    tune_configs,
)


@triton.jit
def qt_rows(q, den, valid, FMAP: tl.constexpr):
    """qt = phi(Q) / den of a (rows, D) tile in q's dtype, zero on rows that are not valid.

    The prologue's totals and the dK/dV kernel's per-block terms both come from here, so that
    "total minus critical" cancels consistently.
    """
    phiq = phi_fwd(q.to(tl.float32), FMAP).to(q.dtype).to(tl.float32)
    return tl.where(valid[:, None], phiq / den[:, None], 0.0).to(q.dtype)


@triton.jit
def _bwd_prologue_kernel(
    Q, OS, DOS, OL, DOL, DEN, DS, DL, HPART, ZPART,
    N, CHUNK,
    D: tl.constexpr, BLK: tl.constexpr, FMAP: tl.constexpr, LINEAR: tl.constexpr,
):  # fmt: skip
    """Row statistics D_s, D_l; partial sums of qt^T dO_l and -qt D_l, with qt = phi(Q)/den."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    n_chunks = tl.num_programs(0)
    offs_d = tl.arange(0, D)
    base = bh * N * D
    h = tl.zeros((D, D), dtype=tl.float32)
    z = tl.zeros((D,), dtype=tl.float32)
    for r0 in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, N), BLK):
        offs_m = r0 + tl.arange(0, BLK)
        valid = offs_m < N
        ptr = base + offs_m[:, None] * D + offs_d[None, :]
        o_s = tl.load(OS + ptr, mask=valid[:, None], other=0.0).to(tl.float32)
        do_s = tl.load(DOS + ptr, mask=valid[:, None], other=0.0).to(tl.float32)
        tl.store(DS + bh * N + offs_m, tl.sum(o_s * do_s, 1), mask=valid)
        if LINEAR != 0:
            o_l = tl.load(OL + ptr, mask=valid[:, None], other=0.0).to(tl.float32)
            do_l = tl.load(DOL + ptr, mask=valid[:, None], other=0.0)
            d_l = tl.sum(o_l * do_l.to(tl.float32), 1)
            tl.store(DL + bh * N + offs_m, d_l, mask=valid)
            q = tl.load(Q + ptr, mask=valid[:, None], other=0.0)
            den = tl.load(DEN + bh * N + offs_m, mask=valid, other=1.0)
            qt = qt_rows(q, den, valid, FMAP)
            h += tl.dot(tl.trans(qt), do_l)
            z -= tl.sum(qt.to(tl.float32) * d_l[:, None], 0)
    if LINEAR != 0:
        part = bh * n_chunks + c
        tl.store(HPART + part * D * D + offs_d[:, None] * D + offs_d[None, :], h)
        tl.store(ZPART + part * D + offs_d, z)


@triton.autotune(
    configs=tune_configs([(4, 2), (8, 2), (4, 3), (8, 3), (8, 1)]),
    key=["D", "BQ", "BK", "LINEAR", "FMAP", "HAS_NEG"],
)
@triton.jit
def _sla_bwd_dq_kernel(
    Q, K, V, DOS, DOL, LSE, DS, DL, DEN, IDX, NIDX, HHI, HLO, ZTOT, DQ,
    N, T_M, KC, KN, qk_scale, sm_scale,
    D: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
    LINEAR: tl.constexpr, FMAP: tl.constexpr, HAS_NEG: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = i * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, D)
    qvalid = offs_m < N
    base = bh * N * D
    row_ptr = base + offs_m[:, None] * D + offs_d[None, :]
    q = tl.load(Q + row_ptr, mask=qvalid[:, None], other=0.0)
    do_s = tl.load(DOS + row_ptr, mask=qvalid[:, None], other=0.0)
    lse = tl.load(LSE + bh * N + offs_m, mask=qvalid, other=0.0)
    d_s = tl.load(DS + bh * N + offs_m, mask=qvalid, other=0.0)
    if LINEAR != 0:
        do_l = tl.load(DOL + row_ptr, mask=qvalid[:, None], other=0.0)
        d_l = tl.load(DL + bh * N + offs_m, mask=qvalid, other=0.0)
    dq = tl.zeros((BQ, D), dtype=tl.float32)
    dphi_sub = tl.zeros((BQ, D), dtype=tl.float32)
    idx_row = IDX + (bh * T_M + i) * KC
    for t in range(0, KC):
        j = tl.load(idx_row + t)
        offs_n = j * BK + tl.arange(0, BK)
        kvalid = offs_n < N
        kv_ptr = base + offs_n[:, None] * D + offs_d[None, :]
        k = tl.load(K + kv_ptr, mask=kvalid[:, None], other=0.0)
        v = tl.load(V + kv_ptr, mask=kvalid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(kvalid[None, :] & qvalid[:, None], p, 0.0)
        dp = tl.dot(do_s, tl.trans(v))
        ds = p * (dp - d_s[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
        if LINEAR == 1:
            pk = phi_rows(k, kvalid, FMAP)
            g = tl.dot(do_l, tl.trans(v)) - d_l[:, None]
            dphi_sub += tl.dot(g.to(k.dtype), pk)
    if LINEAR == 1 and HAS_NEG:
        nidx_row = NIDX + (bh * T_M + i) * KN
        for t in range(0, KN):
            j = tl.load(nidx_row + t)
            offs_n = j * BK + tl.arange(0, BK)
            kvalid = offs_n < N
            kv_ptr = base + offs_n[:, None] * D + offs_d[None, :]
            k = tl.load(K + kv_ptr, mask=kvalid[:, None], other=0.0)
            v = tl.load(V + kv_ptr, mask=kvalid[:, None], other=0.0)
            pk = phi_rows(k, kvalid, FMAP)
            g = tl.dot(do_l, tl.trans(v)) - d_l[:, None]
            dphi_sub += tl.dot(g.to(v.dtype), pk)
    dq = dq * sm_scale
    if LINEAR != 0:
        hp = bh * D * D + offs_d[:, None] * D + offs_d[None, :]
        tot = tl.dot(do_l, tl.trans(tl.load(HHI + hp))) + tl.dot(do_l, tl.trans(tl.load(HLO + hp)))
        ztot = tl.load(ZTOT + bh * D + offs_d)
        den = tl.load(DEN + bh * N + offs_m, mask=qvalid, other=1.0)
        dphi = (tot - d_l[:, None] * ztot[None, :] - dphi_sub) / den[:, None]
        qf = q.to(tl.float32)
        dq += phi_bwd(qf, phi_fwd(qf, FMAP), dphi, FMAP)
    tl.store(DQ + row_ptr, dq.to(DQ.dtype.element_ty), mask=qvalid[:, None])


@triton.autotune(
    configs=tune_configs([(4, 2), (8, 2), (4, 3), (8, 3), (8, 1)]),
    key=["D", "BQ", "BK", "LINEAR", "FMAP", "HAS_NEG"],
)
@triton.jit
def _sla_bwd_dkdv_kernel(
    Q, K, V, DEN, DOS, DOL, LSE, DS, DL, COLROWS, COLSTART, COLCNT,
    NROWS, NSTART, NCNT, DHHI, DHLO, DZTOT, DK, DV,
    N, L, LN, T_N, qk_scale, sm_scale,
    D: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
    LINEAR: tl.constexpr, FMAP: tl.constexpr, HAS_NEG: tl.constexpr,
):  # fmt: skip
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_n = j * BK + tl.arange(0, BK)
    offs_d = tl.arange(0, D)
    kvalid = offs_n < N
    base = bh * N * D
    col_ptr = base + offs_n[:, None] * D + offs_d[None, :]
    k = tl.load(K + col_ptr, mask=kvalid[:, None], other=0.0)
    v = tl.load(V + col_ptr, mask=kvalid[:, None], other=0.0)
    if LINEAR != 0:
        pk = phi_rows(k, kvalid, FMAP)
    dk = tl.zeros((BK, D), dtype=tl.float32)
    dv = tl.zeros((BK, D), dtype=tl.float32)
    dpk = tl.zeros((BK, D), dtype=tl.float32)
    col = bh * T_N + j
    start = tl.load(COLSTART + col)
    cnt = tl.load(COLCNT + col)
    for t in range(0, cnt):
        i = tl.load(COLROWS + bh * L + start + t)
        offs_m = i * BQ + tl.arange(0, BQ)
        qvalid = offs_m < N
        row_ptr = base + offs_m[:, None] * D + offs_d[None, :]
        q = tl.load(Q + row_ptr, mask=qvalid[:, None], other=0.0)
        do_s = tl.load(DOS + row_ptr, mask=qvalid[:, None], other=0.0)
        lse = tl.load(LSE + bh * N + offs_m, mask=qvalid, other=0.0)
        d_s = tl.load(DS + bh * N + offs_m, mask=qvalid, other=0.0)
        st = tl.dot(k, tl.trans(q)) * qk_scale
        pt = tl.exp2(st - lse[None, :])
        pt = tl.where(kvalid[:, None] & qvalid[None, :], pt, 0.0)
        dv += tl.dot(pt.to(v.dtype), do_s)
        dpt = tl.dot(v, tl.trans(do_s))
        dst = pt * (dpt - d_s[None, :])
        dk += tl.dot(dst.to(q.dtype), q)
        if LINEAR == 1:
            den = tl.load(DEN + bh * N + offs_m, mask=qvalid, other=1.0)
            qt = qt_rows(q, den, qvalid, FMAP)
            do_l = tl.load(DOL + row_ptr, mask=qvalid[:, None], other=0.0)
            d_l = tl.load(DL + bh * N + offs_m, mask=qvalid, other=0.0)
            at = tl.dot(pk, tl.trans(qt))
            dv -= tl.dot(at.to(v.dtype), do_l)
            gt = tl.dot(v, tl.trans(do_l)) - d_l[None, :]
            dpk -= tl.dot(gt.to(v.dtype), qt)
    if LINEAR == 1 and HAS_NEG:
        # Query blocks for which this key block is negligible: linear branch only.
        nstart = tl.load(NSTART + col)
        ncnt = tl.load(NCNT + col)
        for t in range(0, ncnt):
            i = tl.load(NROWS + bh * LN + nstart + t)
            offs_m = i * BQ + tl.arange(0, BQ)
            qvalid = offs_m < N
            row_ptr = base + offs_m[:, None] * D + offs_d[None, :]
            q = tl.load(Q + row_ptr, mask=qvalid[:, None], other=0.0)
            den = tl.load(DEN + bh * N + offs_m, mask=qvalid, other=1.0)
            qt = qt_rows(q, den, qvalid, FMAP)
            do_l = tl.load(DOL + row_ptr, mask=qvalid[:, None], other=0.0)
            d_l = tl.load(DL + bh * N + offs_m, mask=qvalid, other=0.0)
            at = tl.dot(pk, tl.trans(qt))
            dv -= tl.dot(at.to(v.dtype), do_l)
            gt = tl.dot(v, tl.trans(do_l)) - d_l[None, :]
            dpk -= tl.dot(gt.to(v.dtype), qt)
    dk = dk * sm_scale
    if LINEAR != 0:
        hp = bh * D * D + offs_d[:, None] * D + offs_d[None, :]
        dh_hi = tl.load(DHHI + hp)
        dh_lo = tl.load(DHLO + hp)
        dv += tl.dot(pk, dh_hi) + tl.dot(pk, dh_lo)
        dpk += tl.dot(v, tl.trans(dh_hi)) + tl.dot(v, tl.trans(dh_lo))
        dpk += tl.load(DZTOT + bh * D + offs_d)[None, :]
        kf = k.to(tl.float32)
        dk += phi_bwd(kf, phi_fwd(kf, FMAP), dpk, FMAP)
    tl.store(DK + col_ptr, dk.to(DK.dtype.element_ty), mask=kvalid[:, None])
    tl.store(DV + col_ptr, dv.to(DV.dtype.element_ty), mask=kvalid[:, None])


def column_lists(
    indices: torch.Tensor, t_n: int, ratio: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each key block, the query blocks that chose it, in CSR form per head.

    indices: (B*H, T_m, k) critical key blocks per query block. Returns rows (B*H, T_m*k*ratio)
    int32, grouped by key block and ascending within each, and start, count (B*H, T_n) int32.
    ratio > 1 splits each query block into ratio slices (rows are then slice numbers).
    Memory O(T_m k), by one sort per head.
    """
    bh, t_m, kc = indices.shape
    flat = indices.reshape(bh, t_m * kc).long()
    row_of = torch.arange(t_m, device=indices.device).repeat_interleave(kc)  # (T_m*k,)
    keys = (flat * t_m + row_of).sort(dim=-1).values  # by key block, then query block
    rows = (keys % t_m).to(torch.int32)
    counts = torch.zeros((bh, t_n), dtype=torch.int32, device=indices.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.int32))
    if ratio > 1:
        sub = torch.arange(ratio, dtype=torch.int32, device=indices.device)
        rows = (rows[..., None] * ratio + sub).flatten(1)
        counts = counts * ratio
    starts = counts.cumsum(-1, dtype=torch.int32) - counts
    return rows.contiguous(), starts.contiguous(), counts.contiguous()


def sla_backward(
    do_s: torch.Tensor, do_l: torch.Tensor, saved: ForwardState, settings: KernelSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv for (B*H, N, D) tensors, from the forward's saved inputs, outputs, statistics."""
    q, k, v, indices, neg_indices, o_s, o_l, lse, den, h_hi, h_lo, ztot = saved
    blkq, blkk = settings.blkq, settings.blkk
    fmap, linear_mode = settings.fmap, settings.linear_mode
    bh, n, d = q.shape
    t_m, kc = indices.shape[1], indices.shape[2]
    t_n = triton.cdiv(n, blkk)
    do_s = do_s.contiguous()
    do_l = do_l.contiguous()
    blk = min(blkq, 64)
    chunk = blk * max(1, triton.cdiv(triton.cdiv(n, blk), 16))
    n_chunks = triton.cdiv(n, chunk)
    d_s = torch.empty((bh, n), dtype=torch.float32, device=q.device)
    d_l = torch.zeros((bh, n), dtype=torch.float32, device=q.device)
    hpart = torch.zeros((bh, n_chunks, d, d), dtype=torch.float32, device=q.device)
    zpart = torch.zeros((bh, n_chunks, d), dtype=torch.float32, device=q.device)
    _bwd_prologue_kernel[(n_chunks, bh)](
        q, o_s, do_s, o_l, do_l, den, d_s, d_l, hpart, zpart, n, chunk,
        D=d, BLK=blk, FMAP=fmap, LINEAR=linear_mode, num_warps=8 if d >= 128 else 4,
    )  # fmt: skip
    dh_hi, dh_lo = split_hi_lo(hpart.sum(dim=1), q.dtype)
    dztot = zpart.sum(dim=1)
    del hpart, zpart
    sm_scale = d**-0.5
    qk_scale = sm_scale * LOG2E
    # dK/dV walks 64-row query slices: a 128-row tile overflows shared memory
    bq_sub = min(blkq, 64)
    col_rows, col_start, col_cnt = column_lists(indices, t_n, blkq // bq_sub)
    kn = neg_indices.shape[2]
    nidx = neg_indices if kn > 0 else indices  # never read without negligible blocks
    if kn > 0:
        neg_rows, neg_start, neg_cnt = column_lists(neg_indices, t_n, blkq // bq_sub)
    else:
        neg_rows, neg_start, neg_cnt = col_rows, col_start, col_cnt  # never read
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    _sla_bwd_dkdv_kernel[(t_n, bh)](
        q, k, v, den, do_s, do_l, lse, d_s, d_l, col_rows, col_start, col_cnt,
        neg_rows, neg_start, neg_cnt, dh_hi, dh_lo, dztot, dk, dv,
        n, col_rows.shape[-1], neg_rows.shape[-1], t_n, qk_scale, sm_scale,
        D=d, BQ=bq_sub, BK=blkk, LINEAR=linear_mode, FMAP=fmap, HAS_NEG=kn > 0,
    )  # fmt: skip
    del col_rows, col_start, col_cnt, neg_rows, neg_start, neg_cnt
    dq = torch.empty_like(q)
    _sla_bwd_dq_kernel[(t_m, bh)](
        q, k, v, do_s, do_l, lse, d_s, d_l, den, indices, nidx, h_hi, h_lo, ztot, dq,
        n, t_m, kc, kn, qk_scale, sm_scale,
        D=d, BQ=blkq, BK=blkk, LINEAR=linear_mode, FMAP=fmap, HAS_NEG=kn > 0,
    )  # fmt: skip
    return dq, dk, dv
