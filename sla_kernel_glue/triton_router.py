"""The SLA router on the GPU: pooling in one Triton pass, the block scores by one float32 matmul,
and top-k selection in one Triton pass that writes the kernels' index rows and the critical mask.
Rows of more than TRITON_TOPK_MAX_BLOCKS key blocks are selected by torch.topk instead.

It ranks exactly as router.route does (float32 scores of pooled q against pooled smooth-K, top-k,
indices ascending). The only difference is the order of float32 summation in the pooling, which
can flip a near-tie (scores equal to ~1e-6 relative); tests check that the blocks are the same.
Exact ties (equal float32 scores) go to the lower block index. With kl > 0 the selection is
router.classify_blocks on the same scores (torch.topk).
"""

# Triton kernels name their pointer arguments in capitals, as the tutorials do.
# ruff: noqa: N803

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import SLAConfig
from .learned_router import projected_scores
from .router import Routing, classify_blocks, n_blocks


@triton.jit
def _block_pool(X, OUT, SUMS, t, bh, N, n_t, D: tl.constexpr, BLK: tl.constexpr, SUB: tl.constexpr):
    """OUT[bh, t] = mean of X[bh, t*BLK:(t+1)*BLK] over its real tokens; SUMS (if given) the sum."""
    offs_d = tl.arange(0, D)
    acc = tl.zeros((D,), dtype=tl.float32)
    for r0 in tl.static_range(0, BLK, SUB):
        offs = t * BLK + r0 + tl.arange(0, SUB)
        x = tl.load(
            X + bh * N * D + offs[:, None] * D + offs_d[None, :],
            mask=(offs < N)[:, None],
            other=0.0,
        )
        acc += tl.sum(x.to(tl.float32), 0)
    count = tl.minimum(N - t * BLK, BLK).to(tl.float32)
    tl.store(OUT + (bh * n_t + t) * D + offs_d, acc / count)
    if SUMS is not None:
        tl.store(SUMS + (bh * n_t + t) * D + offs_d, acc)


@triton.jit
def _pool_kernel(
    Q, K, PQ, PK, SK, N, T_Q, T_K,
    D: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr, SUBQ: tl.constexpr, SUBK: tl.constexpr,
):  # fmt: skip
    """Block means of q (grid axis 2 = 0) and of k, with k's block sums (axis 2 = 1)."""
    t = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    if tl.program_id(2) == 0:
        if t < T_Q:
            _block_pool(Q, PQ, None, t, bh, N, T_Q, D, BQ, SUBQ)
    else:
        if t < T_K:
            _block_pool(K, PK, SK, t, bh, N, T_K, D, BK, SUBK)


@triton.jit
def _top_by_value(x, cols, ok, KC):
    """The KC largest of each row by a float sort: all above the KC-th value, then its ties by
    column. NaN counts as +inf (torch.topk ranks it highest too)."""
    x = tl.where(x != x, float("inf"), x)
    ranked = tl.sort(x, dim=1, descending=True)
    kth = tl.sum(tl.where(cols[None, :] == KC - 1, ranked, 0.0), 1)
    above = x > kth[:, None]
    tie = (x == kth[:, None]) & ok
    need = KC - tl.sum(above.to(tl.int32), 1)
    return above | (tie & (tl.cumsum(tie.to(tl.int32), 1) <= need[:, None]))


@triton.jit
def _topk_kernel(
    S, IDX, MASK, ROWS, T_N, KC,
    TNP: tl.constexpr, R: tl.constexpr, FLOAT_SORT: tl.constexpr,
):  # fmt: skip
    """Per score row: the KC largest of T_N, written as ascending block indices and a bool mask.

    Each (score, column) pair becomes one int64 key, the float's bits made order-preserving in
    the high word and the reversed column in the low word: keys are unique (exactly KC pass the
    KC-th largest), and equal scores go to the lower column.
    """
    rows = tl.program_id(0) * R + tl.arange(0, R)
    cols = tl.arange(0, TNP)
    row_ok = rows < ROWS
    ok = row_ok[:, None] & (cols < T_N)[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(S + rows64[:, None] * T_N + cols[None, :], mask=ok, other=float("-inf"))
    if FLOAT_SORT:
        sel = _top_by_value(x, cols, ok, KC)
    else:
        bits = x.to(tl.int32, bitcast=True)
        fkey = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        key = (fkey.to(tl.int64) << 32) | (TNP - 1 - cols).to(tl.int64)[None, :]
        ranked = tl.sort(key, dim=1, descending=True)
        kth = tl.sum(tl.where(cols[None, :] == KC - 1, ranked, 0), 1)
        sel = key >= kth[:, None]
    pos = tl.cumsum(sel.to(tl.int32), 1) - 1
    tl.store(IDX + rows64[:, None] * KC + pos, cols[None, :] + 0 * pos, mask=sel & ok)
    tl.store(MASK + rows64[:, None] * T_N + cols[None, :], sel, mask=ok)


def pool_blocks(
    q3: torch.Tensor, k3: torch.Tensor, blkq: int, blkk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B*H, N, D) q, k -> float32 block means of q (B*H, T_m, D) and of smooth-K (B*H, T_n, D)."""
    bh, n, d = q3.shape
    t_q, t_k = n_blocks(n, blkq), n_blocks(n, blkk)
    pq = torch.empty((bh, t_q, d), dtype=torch.float32, device=q3.device)
    pk = torch.empty((bh, t_k, d), dtype=torch.float32, device=q3.device)
    sk = torch.empty_like(pk)
    _pool_kernel[(max(t_q, t_k), bh, 2)](
        q3, k3, pq, pk, sk, n, t_q, t_k,
        D=d, BQ=blkq, BK=blkk, SUBQ=min(blkq, 64), SUBK=min(blkk, 64), num_warps=4,
    )  # fmt: skip
    # smooth-K: subtract k's mean over all tokens (same ranking, better precision)
    return pq, torch.sub(pk, sk.sum(dim=1, keepdim=True), alpha=1.0 / n)


# Widest score row (key blocks) that select_topk handles: on an H200 its sort beat torch.topk at
# 128 and 512 blocks and lost at 1182 (docs/benchmarks.md); wider rows go to torch.topk.
TRITON_TOPK_MAX_BLOCKS = 512
# Select by a float32 sort and a tie pass (True) or by a sort of unique int64 keys (False).
FLOAT_SORT = True


def select_topk(
    scores: torch.Tensor, kc: int, float_sort: bool = FLOAT_SORT
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B*H, T_m, T_n) float32 scores -> ascending top-kc indices (B*H, T_m, kc) int32 and the
    (B*H, T_m, T_n) bool mask of the chosen blocks."""
    bh, t_m, t_n = scores.shape
    tnp = triton.next_power_of_2(t_n)
    r = max(1, 4096 // tnp)
    idx = torch.empty((bh, t_m, kc), dtype=torch.int32, device=scores.device)
    mask = torch.empty((bh, t_m, t_n), dtype=torch.bool, device=scores.device)
    rows = bh * t_m
    _topk_kernel[(triton.cdiv(rows, r),)](
        scores, idx, mask, rows, t_n, kc, TNP=tnp, R=r, FLOAT_SORT=float_sort,
        num_warps=4 if tnp * r <= 4096 else 8,
    )  # fmt: skip
    return idx, mask


@torch.compiler.disable  # eager under torch.compile: one graph break, the fused op stays in the graph
def route_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    config: SLAConfig,
    router_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Routing:
    """router.route for (B, H, N, D) q and k (any float dtype; D a power of two); with
    router_weights, the learned router's hard selection (learned_router.learned_route's)."""
    return route_for_kernels(q, k, config, router_weights)[0]


@torch.compiler.disable
def route_for_kernels(
    q: torch.Tensor,
    k: torch.Tensor,
    config: SLAConfig,
    router_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[Routing, torch.Tensor]:
    """route_triton's Routing and the same critical blocks as the kernels take them:
    (B*H, T_m, k) int32, contiguous."""
    b, h, n, d = q.shape
    with torch.no_grad():
        q3 = q.detach().reshape(b * h, n, d).contiguous()
        k3 = k.detach().reshape(b * h, n, d).contiguous()
        pq, pk = pool_blocks(q3, k3, config.blkq, config.blkk)
        if router_weights is None:
            scores = torch.bmm(pq, pk.transpose(1, 2))  # (B*H, T_m, T_n)
        else:  # the learned router: the pooled rows through its projections first
            scores = projected_scores(pq, pk, *router_weights)
        t_m, t_n = scores.shape[1:]
        if config.negligible_blocks(t_n) > 0 or t_n > TRITON_TOPK_MAX_BLOCKS:
            routing = classify_blocks(scores.view(b, h, t_m, t_n), config)
            idx = routing.indices.reshape(b * h, t_m, -1).to(torch.int32).contiguous()
            return routing, idx
        idx, mask = select_topk(scores, config.critical_blocks(t_n))
        critical = mask.view(b, h, t_m, t_n)
        routing = Routing(
            indices=idx.view(b, h, t_m, -1).long(),
            critical=critical,
            negligible=critical.new_zeros(()).expand_as(critical),
        )
        return routing, idx
