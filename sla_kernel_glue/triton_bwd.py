"""Triton backward of SLA: a prologue over all tokens, then dQ (per query block, over its critical
key blocks) and dK/dV (per key block, over the query blocks that chose it).

Formulas (sla-algorithm.md, Backward), written so that the linear branch again needs no per-block
d x d state: with qt = phi(Q) / den and D_l = rowsum(dO_l * O_l),
  dphi(Q_i) den = dO_l,i H^T - D_l,i Z^T - sum_{j crit} (dO_l,i V_j^T - D_l,i) phi(K_j)
  dV_j     += phi(K_j) dH_tot - sum_{i: j crit} (phi(K_j) qt_i^T) dO_l,i
  dphi(K_j) = V_j dH_tot^T + dZ_tot - sum_{i: j crit} (V_j dO_l,i^T - D_l,i) qt_i
where dH_tot = sum over all query tokens qt^T dO_l and dZ_tot = -sum qt D_l.

qt is recomputed from Q and den tiles by qt_rows, the arithmetic the prologue uses for the totals.
The marginal scope's dK/dV runs in two passes (MARGINAL_DKDV_SPLIT): the sparse branch's dK, dV,
then the linear branch's terms added to them. phi(K) comes from phi_rows too; for the marginal
scope dQ reads it from a buffer that is freed before dK and dV are allocated, so the peak stays at
the dK/dV phase (no (B*H, N, D) temporary beside dq, dk, dv there).
"""

# Triton kernels name their pointer arguments in capitals, as the tutorials do.
# ruff: noqa: N803

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_fwd import (
    LINEAR_MARGINAL,
    LOG2E,
    MARGINAL_PHIK_BUFFER,
    ForwardState,
    KernelSettings,
    LaunchConfig,
    add_totals,
    block_rows,
    kernel_and_kwargs,
    load_hi_lo,
    load_rows,
    load_z,
    phi_bwd,
    phi_fwd,
    phi_rows,
    prune_by_rows,
    stream_launch,
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
    Q, OS, DOS, OL, DOL, DEN, DS, DL, DTOT,
    N, CHUNK,
    D: tl.constexpr, BLK: tl.constexpr, FMAP: tl.constexpr, LINEAR: tl.constexpr,
):  # fmt: skip
    """Row statistics D_s, D_l; sums of qt^T dO_l and -qt D_l (qt = phi(Q)/den) over a chunk,
    added into the zeroed totals DTOT (add_totals)."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
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
        add_totals(DTOT, bh, h, z, D)


@triton.jit
def load_stats(X, bh, N, offs, valid, other, MASKED: tl.constexpr):
    """X[bh, offs] of a (B*H, N) float32 row statistic; `other` past N when MASKED."""
    if MASKED:
        return tl.load(X + bh * N + offs, mask=valid, other=other)
    return tl.load(X + bh * N + offs)


@triton.jit
def _dq_visit(
    q, do_s, do_l, lse, d_s, d_l, K, V, PHIK, base, offs_n, kvalid, qvalid, dq, dphi_sub,
    qk_scale,
    D: tl.constexpr, LINEAR: tl.constexpr, FMAP: tl.constexpr, MASKED: tl.constexpr,
    LOAD_PHIK: tl.constexpr,
):  # fmt: skip
    """dQ's share of one (rows, D) key tile, and for marginal its linear-branch correction."""
    k = load_rows(K, base, offs_n, kvalid, D, MASKED)
    v = load_rows(V, base, offs_n, kvalid, D, MASKED)
    p = tl.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(kvalid[None, :] & qvalid[:, None], p, 0.0)
    dp = tl.dot(do_s, tl.trans(v))
    dq += tl.dot((p * (dp - d_s[:, None])).to(k.dtype), k)
    if LINEAR == 1:
        if LOAD_PHIK:
            pk = load_rows(PHIK, base, offs_n, kvalid, D, MASKED)
        else:
            pk = phi_rows(k, kvalid, FMAP)
        g = tl.dot(do_l, tl.trans(v)) - d_l[:, None]
        dphi_sub += tl.dot(g.to(k.dtype), pk)
    return dq, dphi_sub


@triton.jit
def _dq_linear_visit(
    do_l, d_l, K, V, base, offs_n, kvalid, dphi_sub, D: tl.constexpr, FMAP: tl.constexpr
):
    """A negligible key tile: its linear-branch correction only."""
    k = load_rows(K, base, offs_n, kvalid, D, True)
    v = load_rows(V, base, offs_n, kvalid, D, True)
    g = tl.dot(do_l, tl.trans(v)) - d_l[:, None]
    return dphi_sub + tl.dot(g.to(v.dtype), phi_rows(k, kvalid, FMAP))


# Measured fastest on an H200 (d 128, N 32768): one to three stages on 4 warps for 64 rows.
DQ_CONFIGS = [
    LaunchConfig(4, 2, 1),
    LaunchConfig(4, 3, 1),
    LaunchConfig(4, 1, 1),
    LaunchConfig(8, 2, 1),
    LaunchConfig(8, 3, 1),
]


@triton.autotune(
    configs=tune_configs(DQ_CONFIGS),
    key=["N", "D", "BQ", "BK", "LINEAR", "FMAP", "HAS_NEG"],
    prune_configs_by={"early_config_prune": prune_by_rows},
)
@triton.jit
def _sla_bwd_dq_kernel(
    Q, K, V, DOS, DOL, LSE, DS, DL, DEN, IDX, NIDX, TOT, PHIK, DQ,
    N, T_M, KC, KN, qk_scale, sm_scale,
    D: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
    LINEAR: tl.constexpr, FMAP: tl.constexpr, HAS_NEG: tl.constexpr,
    MASKED: tl.constexpr, LOAD_PHIK: tl.constexpr, PAIR: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = i * BQ + tl.arange(0, BQ)
    qvalid = offs_m < N
    base = bh * N * D
    q = load_rows(Q, base, offs_m, qvalid, D, True)
    do_s = load_rows(DOS, base, offs_m, qvalid, D, True)
    lse = load_stats(LSE, bh, N, offs_m, qvalid, 0.0, True)
    d_s = load_stats(DS, bh, N, offs_m, qvalid, 0.0, True)
    do_l = do_s
    d_l = d_s
    if LINEAR != 0:
        do_l = load_rows(DOL, base, offs_m, qvalid, D, True)
        d_l = load_stats(DL, bh, N, offs_m, qvalid, 0.0, True)
    dq = tl.zeros((BQ, D), dtype=tl.float32)
    dphi_sub = tl.zeros((BQ, D), dtype=tl.float32)
    idx_row = IDX + (bh * T_M + i) * KC
    for t in range(0, KC // PAIR):
        offs_n, kvalid = block_rows(idx_row, t, N, BK, PAIR)
        dq, dphi_sub = _dq_visit(
            q, do_s, do_l, lse, d_s, d_l, K, V, PHIK, base, offs_n, kvalid, qvalid, dq, dphi_sub,
            qk_scale, D, LINEAR, FMAP, MASKED, LOAD_PHIK,
        )  # fmt: skip
    for t in range((KC // PAIR) * PAIR, KC):
        offs_n, kvalid = block_rows(idx_row, t, N, BK, 1)
        dq, dphi_sub = _dq_visit(
            q, do_s, do_l, lse, d_s, d_l, K, V, PHIK, base, offs_n, kvalid, qvalid, dq, dphi_sub,
            qk_scale, D, LINEAR, FMAP, MASKED, LOAD_PHIK,
        )  # fmt: skip
    if LINEAR == 1 and HAS_NEG:
        nidx_row = NIDX + (bh * T_M + i) * KN
        for t in range(0, KN):
            offs_n, kvalid = block_rows(nidx_row, t, N, BK, 1)
            dphi_sub = _dq_linear_visit(do_l, d_l, K, V, base, offs_n, kvalid, dphi_sub, D, FMAP)
    dq = dq * sm_scale
    if LINEAR != 0:
        h_hi, h_lo = load_hi_lo(TOT, bh, do_l.dtype, D)
        tot = tl.dot(do_l, tl.trans(h_hi)) + tl.dot(do_l, tl.trans(h_lo))
        ztot = load_z(TOT, bh, D)
        den = load_stats(DEN, bh, N, offs_m, qvalid, 1.0, True)
        dphi = (tot - d_l[:, None] * ztot[None, :] - dphi_sub) / den[:, None]
        qf = q.to(tl.float32)
        dq += phi_bwd(qf, phi_fwd(qf, FMAP), dphi, FMAP)
    tl.store(DQ + base + offs_m[:, None] * D + tl.arange(0, D)[None, :], dq.to(DQ.dtype.element_ty),
             mask=qvalid[:, None])  # fmt: skip


@triton.jit
def _dkdv_visit(
    k, v, pk, Q, DOS, DOL, LSE, DS, DL, DEN, bh, N, base, offs_m, qvalid, kvalid, dk, dv, dpk,
    qk_scale,
    D: tl.constexpr, LINEAR: tl.constexpr, FMAP: tl.constexpr, MASKED: tl.constexpr,
    PART: tl.constexpr,
):  # fmt: skip
    """dK/dV's share of one (rows, D) query tile that chose this key block: the sparse branch
    (unless PART 2) and the marginal linear branch's correction (unless PART 1)."""
    q = load_rows(Q, base, offs_m, qvalid, D, MASKED)
    if PART != 2:
        do_s = load_rows(DOS, base, offs_m, qvalid, D, MASKED)
        lse = load_stats(LSE, bh, N, offs_m, qvalid, 0.0, MASKED)
        d_s = load_stats(DS, bh, N, offs_m, qvalid, 0.0, MASKED)
        pt = tl.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
        if MASKED:
            pt = tl.where(kvalid[:, None] & qvalid[None, :], pt, 0.0)
        dv += tl.dot(pt.to(v.dtype), do_s)
        dpt = tl.dot(v, tl.trans(do_s))
        dk += tl.dot((pt * (dpt - d_s[None, :])).to(q.dtype), q)
    if LINEAR == 1 and PART != 1:
        dv, dpk = _dkdv_linear(pk, v, q, DOL, DL, DEN, bh, N, base, offs_m, qvalid, dv, dpk,
                               D, FMAP, MASKED)  # fmt: skip
    return dk, dv, dpk


@triton.jit
def _dkdv_linear(
    pk, v, q, DOL, DL, DEN, bh, N, base, offs_m, qvalid, dv, dpk,
    D: tl.constexpr, FMAP: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    """The linear-branch correction of one query tile for which this key block is not marginal."""
    den = load_stats(DEN, bh, N, offs_m, qvalid, 1.0, MASKED)
    qt = qt_rows(q, den, qvalid, FMAP)
    do_l = load_rows(DOL, base, offs_m, qvalid, D, MASKED)
    d_l = load_stats(DL, bh, N, offs_m, qvalid, 0.0, MASKED)
    at = tl.dot(pk, tl.trans(qt))
    dv -= tl.dot(at.to(v.dtype), do_l)
    gt = tl.dot(v, tl.trans(do_l)) - d_l[None, :]
    dpk -= tl.dot(gt.to(v.dtype), qt)
    return dv, dpk


# Measured fastest on an H200 (d 128, N 32768): 4 warps, 2 stages for scope all and for both passes
# of the marginal dK/dV; 8 warps, 3 stages for the marginal dK/dV in one pass.
DKDV_CONFIGS = [
    LaunchConfig(4, 2, 1),
    LaunchConfig(8, 2, 1),
    LaunchConfig(8, 3, 1),
]
# PART of the dK/dV kernel: 0 both branches in one pass; the marginal scope may instead run
# 1 (sparse branch, stores its dK, dV) and then 2 (linear branch, adds to what 1 stored).
DKDV_FUSED, DKDV_SPARSE, DKDV_LINEAR = 0, 1, 2


# restore_value: pass 2 adds to the DK, DV that pass 1 stored, so each autotuning run must start
# from pass 1's values (without it, the first call at a new size returned dK, dV added many times).
# The autotuner copies DK and DV for that: two (B*H, N, D) buffers more, in the first call only.
@triton.autotune(
    configs=tune_configs(DKDV_CONFIGS),
    key=["N", "D", "BQ", "BK", "LINEAR", "FMAP", "HAS_NEG", "PART"],
    restore_value=["DK", "DV"],
)
@triton.jit
def _sla_bwd_dkdv_kernel(
    Q, K, V, DEN, DOS, DOL, LSE, DS, DL, COLROWS, COLSTART, COLCNT,
    NROWS, NSTART, NCNT, DTOT, DK, DV,
    N, L, LN, T_N, qk_scale, sm_scale,
    D: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
    LINEAR: tl.constexpr, FMAP: tl.constexpr, HAS_NEG: tl.constexpr,
    MASKED: tl.constexpr, PART: tl.constexpr, PAIR: tl.constexpr,
):  # fmt: skip
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_n = j * BK + tl.arange(0, BK)
    offs_d = tl.arange(0, D)
    kvalid = offs_n < N
    base = bh * N * D
    k = load_rows(K, base, offs_n, kvalid, D, True)
    v = load_rows(V, base, offs_n, kvalid, D, True)
    linear = LINEAR != 0 and PART != 1  # this pass adds the linear branch's terms
    pk = phi_rows(k, kvalid, FMAP) if linear else k
    dk = tl.zeros((BK, D), dtype=tl.float32)
    dv = tl.zeros((BK, D), dtype=tl.float32)
    dpk = tl.zeros((BK, D), dtype=tl.float32)
    col = bh * T_N + j
    rows = COLROWS + bh * L + tl.load(COLSTART + col)
    cnt = tl.load(COLCNT + col)
    for t in range(0, cnt // PAIR):
        offs_m, qvalid = block_rows(rows, t, N, BQ, PAIR)
        dk, dv, dpk = _dkdv_visit(
            k, v, pk, Q, DOS, DOL, LSE, DS, DL, DEN, bh, N, base, offs_m, qvalid, kvalid,
            dk, dv, dpk, qk_scale, D, LINEAR, FMAP, MASKED, PART,
        )  # fmt: skip
    for t in range((cnt // PAIR) * PAIR, cnt):
        offs_m, qvalid = block_rows(rows, t, N, BQ, 1)
        dk, dv, dpk = _dkdv_visit(
            k, v, pk, Q, DOS, DOL, LSE, DS, DL, DEN, bh, N, base, offs_m, qvalid, kvalid,
            dk, dv, dpk, qk_scale, D, LINEAR, FMAP, MASKED, PART,
        )  # fmt: skip
    if (LINEAR == 1 and HAS_NEG) and PART != 1:  # nested: Triton 3.6 takes two operands per "and"
        # Query blocks for which this key block is negligible: linear branch only.
        nrows = NROWS + bh * LN + tl.load(NSTART + col)
        for t in range(0, tl.load(NCNT + col)):
            offs_m, qvalid = block_rows(nrows, t, N, BQ, 1)
            q = load_rows(Q, base, offs_m, qvalid, D, True)
            dv, dpk = _dkdv_linear(pk, v, q, DOL, DL, DEN, bh, N, base, offs_m, qvalid, dv, dpk,
                                   D, FMAP, True)  # fmt: skip
    dk = dk * sm_scale
    if linear:
        dv, dk = _dkdv_totals(k, v, pk, DTOT, bh, dk, dv, dpk, D, FMAP)
    col_ptr = base + offs_n[:, None] * D + offs_d[None, :]
    if PART == 2:  # add the sparse branch's dK, dV that PART 1 stored
        dk += tl.load(DK + col_ptr, mask=kvalid[:, None], other=0.0).to(tl.float32)
        dv += tl.load(DV + col_ptr, mask=kvalid[:, None], other=0.0).to(tl.float32)
    tl.store(DK + col_ptr, dk.to(DK.dtype.element_ty), mask=kvalid[:, None])
    tl.store(DV + col_ptr, dv.to(DV.dtype.element_ty), mask=kvalid[:, None])


@triton.jit
def _dkdv_totals(k, v, pk, DTOT, bh, dk, dv, dpk, D: tl.constexpr, FMAP: tl.constexpr):
    """The linear branch's terms from the totals dH, dZ, and dK through phi."""
    dh_hi, dh_lo = load_hi_lo(DTOT, bh, v.dtype, D)
    dv += tl.dot(pk, dh_hi) + tl.dot(pk, dh_lo)
    dpk += tl.dot(v, tl.trans(dh_hi)) + tl.dot(v, tl.trans(dh_lo))
    dpk += load_z(DTOT, bh, D)[None, :]
    kf = k.to(tl.float32)
    return dv, dk + phi_bwd(kf, phi_fwd(kf, FMAP), dpk, FMAP)


@triton.jit
def _phi_kernel(K, PHIK, N, D: tl.constexpr, BLK: tl.constexpr, FMAP: tl.constexpr):
    """PHIK = phi_rows(K), rows BLK at a time."""
    r = tl.program_id(0)
    base = tl.program_id(1).to(tl.int64) * N * D
    offs = r * BLK + tl.arange(0, BLK)
    valid = offs < N
    pk = phi_rows(load_rows(K, base, offs, valid, D, True), valid, FMAP)
    tl.store(PHIK + base + offs[:, None] * D + tl.arange(0, D)[None, :], pk, mask=valid[:, None])


@triton.jit
def _column_fill_kernel(
    MASK, STARTS, ROWS, T_M, T_N, L,
    RATIO: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """CSR rows of the (B*H, T_m, T_n) bool mask by column: ascending row numbers (times RATIO,
    plus each slice), from STARTS on."""
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    bh = tl.program_id(1).to(tl.int64)
    cok = cols < T_N
    start = tl.load(STARTS + bh * T_N + cols, mask=cok, other=0)
    run = tl.zeros((BC,), dtype=tl.int32)
    for r0 in range(0, T_M, BR):
        rows = r0 + tl.arange(0, BR)
        ok = (rows < T_M)[:, None] & cok[None, :]
        m = tl.load(MASK + (bh * T_M + rows[:, None]) * T_N + cols[None, :], mask=ok, other=0)
        m = m.to(tl.int32)
        pos = start[None, :] + (tl.cumsum(m, 0) + run[None, :] - 1) * RATIO
        for s in tl.static_range(RATIO):
            tl.store(ROWS + bh * L + pos + s, rows[:, None] * RATIO + s + 0 * pos, mask=m > 0)
        run += tl.sum(m, 0)


def column_lists_from_mask(
    mask: torch.Tensor, length: int, ratio: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """column_lists from the (B*H, T_m, T_n) bool mask of the chosen blocks (length: the number
    of True entries per head, the same for every head)."""
    bh, t_m, t_n = mask.shape
    counts = mask.sum(dim=1, dtype=torch.int32)
    if ratio > 1:
        counts = counts * ratio
    starts = counts.cumsum(-1, dtype=torch.int32) - counts
    rows = torch.empty((bh, length * ratio), dtype=torch.int32, device=mask.device)
    _column_fill_kernel[(triton.cdiv(t_n, 64), bh)](
        mask, starts, rows, t_m, t_n, length * ratio, RATIO=ratio, BR=32, BC=64, num_warps=4
    )
    return rows, starts, counts


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


# The marginal scope runs dK/dV as two passes (DKDV_SPARSE, then DKDV_LINEAR), each with two
# accumulators instead of three: faster on an H200 at N 8192 and 32768 (docs/benchmarks.md).
MARGINAL_DKDV_SPLIT = True


def sla_backward(
    do_s: torch.Tensor,
    do_l: torch.Tensor,
    saved: ForwardState,
    settings: KernelSettings,
    dq_launch: LaunchConfig | None = None,
    dkdv_launch: LaunchConfig | None = None,
    phik_buffer: bool = MARGINAL_PHIK_BUFFER,
    dkdv_split: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv for (B*H, N, D) tensors, from the forward's saved inputs, outputs, statistics.

    dq_launch, dkdv_launch: autotuned when None. phik_buffer: the marginal scope's dQ reads phi(K)
    from a buffer, freed before dK and dV are allocated (so the peak does not grow). dkdv_split:
    the marginal scope's dK/dV in two passes (sparse, then linear); None: MARGINAL_DKDV_SPLIT."""
    q, k, v, indices, neg_indices = saved[:5]
    blkq, blkk, fmap, mode = settings.blkq, settings.blkk, settings.fmap, settings.linear_mode
    bh, n, d = q.shape
    t_m, kc = indices.shape[1], indices.shape[2]
    t_n = triton.cdiv(n, blkk)
    do_s, do_l = do_s.contiguous(), do_l.contiguous()
    d_s, d_l, dtot = bwd_prologue(q, do_s, do_l, saved, settings)
    sm_scale = d**-0.5
    qk_scale = sm_scale * LOG2E
    kn = neg_indices.shape[2]
    masked = n % blkk != 0 or n % min(blkq, 64) != 0
    load_phik = phik_buffer and mode == LINEAR_MARGINAL
    phik = torch.empty_like(k) if load_phik else k
    if load_phik:
        _phi_kernel[(triton.cdiv(n, 64), bh)](k, phik, n, D=d, BLK=64, FMAP=fmap, num_warps=4)
    dq = torch.empty_like(q)
    kernel, kwargs = kernel_and_kwargs(_sla_bwd_dq_kernel, dq_launch)
    kernel[(t_m, bh)](
        q, k, v, do_s, do_l, saved.lse, d_s, d_l, saved.den, indices,
        neg_indices if kn > 0 else indices, saved.totals, phik, dq,
        n, t_m, kc, kn, qk_scale, sm_scale,
        D=d, BQ=blkq, BK=blkk, LINEAR=mode, FMAP=fmap, HAS_NEG=kn > 0, MASKED=masked,
        LOAD_PHIK=load_phik, **kwargs,
    )  # fmt: skip
    del phik
    # dK/dV walks 64-row query slices: a 128-row tile overflows shared memory
    bq_sub = min(blkq, 64)
    critical = torch.zeros((bh, t_m, t_n), dtype=torch.bool, device=q.device)
    critical.scatter_(2, indices.long(), True)
    cols = column_lists_from_mask(critical, t_m * kc, blkq // bq_sub)
    del critical
    negs = column_lists(neg_indices, t_n, blkq // bq_sub) if kn > 0 else cols  # never read if 0
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    kernel, kwargs = kernel_and_kwargs(_sla_bwd_dkdv_kernel, dkdv_launch)
    split = (MARGINAL_DKDV_SPLIT if dkdv_split is None else dkdv_split) and mode == LINEAR_MARGINAL
    for part in (DKDV_SPARSE, DKDV_LINEAR) if split else (DKDV_FUSED,):
        kernel[(t_n, bh)](
            q, k, v, saved.den, do_s, do_l, saved.lse, d_s, d_l, *cols, *negs, dtot, dk, dv,
            n, cols[0].shape[-1], negs[0].shape[-1], t_n, qk_scale, sm_scale,
            D=d, BQ=bq_sub, BK=blkk, LINEAR=mode, FMAP=fmap, HAS_NEG=kn > 0, MASKED=masked,
            PART=part, **kwargs,
        )  # fmt: skip
    return dq, dk, dv


def bwd_prologue(q, do_s, do_l, saved: ForwardState, settings: KernelSettings, launch=None):
    """Row statistics D_s, D_l (B*H, N) and the linear branch's totals (B*H, D + 1, D) float32:
    dH = sum qt^T dO_l in rows 0..D-1, dZ = -sum qt D_l in row D."""
    bh, n, d = q.shape
    launch = stream_launch(launch, d)
    chunk = launch.chunk_rows(n)
    d_s = torch.empty((bh, n), dtype=torch.float32, device=q.device)
    d_l = torch.empty((bh, n), dtype=torch.float32, device=q.device)  # unread if not linear
    dtot = torch.zeros((bh, d + 1, d), dtype=torch.float32, device=q.device)
    _bwd_prologue_kernel[(triton.cdiv(n, chunk), bh)](
        q, saved.o_s, do_s, saved.o_l, do_l, saved.den, d_s, d_l, dtot, n, chunk,
        D=d, BLK=launch.blk, FMAP=settings.fmap, LINEAR=settings.linear_mode,
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )  # fmt: skip
    return d_s, d_l, dtot
