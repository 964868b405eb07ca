"""The SLA router on the GPU: block pooling in one Triton pass, selection by torch.topk.

It ranks exactly as router.route does (float32 scores of pooled q against pooled smooth-K, top-k,
indices ascending). The only difference is the order of float32 summation in the pooling, which
can flip a near-tie (scores equal to ~1e-6 relative); tests check that the blocks are the same.
"""

# Triton kernels name their pointer arguments in capitals, as the tutorials do.
# ruff: noqa: N803

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import SLAConfig
from .router import Routing, classify_blocks, n_blocks


@triton.jit
def _block_sum_kernel(X, OUT, N, D: tl.constexpr, BLK: tl.constexpr, SUB: tl.constexpr):
    """OUT[bh, t] = sum of X[bh, t*BLK:(t+1)*BLK] over tokens, float32; X is (B*H, N, D)."""
    t = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    n_t = tl.num_programs(0)
    offs_d = tl.arange(0, D)
    acc = tl.zeros((D,), dtype=tl.float32)
    for r0 in range(0, BLK, SUB):
        offs = t * BLK + r0 + tl.arange(0, SUB)
        x = tl.load(
            X + bh * N * D + offs[:, None] * D + offs_d[None, :],
            mask=(offs < N)[:, None],
            other=0.0,
        )
        acc += tl.sum(x.to(tl.float32), 0)
    tl.store(OUT + (bh * n_t + t) * D + offs_d, acc)


def block_sums(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B*H, N, D) contiguous -> (B*H, ceil(N / block), D) float32 token sums per block."""
    bh, n, d = x.shape
    t = n_blocks(n, block)
    out = torch.empty((bh, t, d), dtype=torch.float32, device=x.device)
    _block_sum_kernel[(t, bh)](x, out, n, D=d, BLK=block, SUB=min(block, 32), num_warps=4)
    return out


def block_counts(n: int, block: int, device: torch.device) -> torch.Tensor:
    """Real tokens per block: block everywhere but a partial last block."""
    t = n_blocks(n, block)
    counts = torch.full((t,), float(block), dtype=torch.float32, device=device)
    counts[-1] = n - (t - 1) * block
    return counts


@torch.compiler.disable  # eager under torch.compile: one graph break, the fused op stays in the graph
def route_triton(q: torch.Tensor, k: torch.Tensor, config: SLAConfig) -> Routing:
    """router.route for (B, H, N, D) q and k (any float dtype; D a power of two)."""
    b, h, n, d = q.shape
    with torch.no_grad():
        q3 = q.detach().reshape(b * h, n, d).contiguous()
        k3 = k.detach().reshape(b * h, n, d).contiguous()
        sq = block_sums(q3, config.blkq)
        sk = block_sums(k3, config.blkk)
        pq = sq / block_counts(n, config.blkq, q.device)[:, None]
        k_mean = sk.sum(dim=1, keepdim=True) / n  # smooth-K
        pk = sk / block_counts(n, config.blkk, q.device)[:, None] - k_mean
        scores = (pq @ pk.transpose(-1, -2)).reshape(b, h, pq.shape[1], pk.shape[1])
        return classify_blocks(scores, config)
