"""The SLA router: which key blocks each query block attends to exactly. Not differentiable
(the learned router, learned_router.py, carries its gradient beside the selection)."""

from __future__ import annotations

import dataclasses

import torch

from .config import SLAConfig


@dataclasses.dataclass(frozen=True)
class Routing:
    """Block classification for one attention call.

    indices: (B, H, T_m, k) int64, the critical key blocks of each query-block row, ascending.
    critical: (B, H, T_m, T_n) bool.
    negligible: (B, H, T_m, T_n) bool (all False when kl == 0).
    gate: None, or (B, H, T_m, T_n) zeros that carry a learned router's soft top-k gradient
        (learned_router.py; only the reference applies it).
    """

    indices: torch.Tensor
    critical: torch.Tensor
    negligible: torch.Tensor
    gate: torch.Tensor | None = None

    @property
    def n_critical(self) -> int:
        return self.indices.shape[-1]

    @property
    def density(self) -> float:
        """Realised density k / T_n of the sparse branch."""
        return self.indices.shape[-1] / self.critical.shape[-1]

    def marginal(self, linear_scope: str) -> torch.Tensor:
        """(B, H, T_m, T_n) bool: key blocks the linear branch covers."""
        if linear_scope == "all":
            return torch.ones_like(self.critical)
        if linear_scope == "none":
            return torch.zeros_like(self.critical)
        return ~(self.critical | self.negligible)


def n_blocks(n: int, block: int) -> int:
    return -(-n // block)


def block_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over consecutive token blocks; a partial last block is averaged over its real length.

    (B, H, N, d) -> (B, H, ceil(N / block), d)
    """
    b, h, n, d = x.shape
    t = n_blocks(n, block)
    pad = t * block - n
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    sums = x.reshape(b, h, t, block, d).sum(dim=3)  # (B, H, T, d)
    counts = torch.full((t,), float(block), dtype=sums.dtype, device=x.device)
    counts[-1] = block - pad
    return sums / counts[:, None]


def block_scores(q: torch.Tensor, k: torch.Tensor, config: SLAConfig) -> torch.Tensor:
    """(B, H, T_m, T_n) router scores: pooled q against pooled smooth-K.

    Computed in float32 (float64 for float64 inputs) so that every backend ranks the same.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q = q.detach().to(acc)
    k = k.detach().to(acc)
    k = k - k.mean(dim=-2, keepdim=True)  # smooth-K: same ranking, better precision
    pq = block_mean(q, config.blkq)
    pk = block_mean(k, config.blkk)
    return pq @ pk.transpose(-1, -2)


def route(q: torch.Tensor, k: torch.Tensor, config: SLAConfig) -> Routing:
    """Classify key blocks per query-block row: top-k critical, bottom-kl negligible, rest marginal."""
    with torch.no_grad():
        return classify_blocks(block_scores(q, k, config), config)


def classify_blocks(scores: torch.Tensor, config: SLAConfig) -> Routing:
    """Routing from (B, H, T_m, T_n) block scores; shared by the PyTorch and Triton routers."""
    t_n = scores.shape[-1]
    top = scores.topk(config.critical_blocks(t_n), dim=-1, sorted=False).indices
    indices, _ = top.sort(dim=-1)
    critical = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    critical.scatter_(-1, indices, True)
    negligible = torch.zeros_like(critical)
    n_neg = config.negligible_blocks(t_n)
    if n_neg:
        bottom = scores.topk(n_neg, dim=-1, largest=False).indices
        negligible.scatter_(-1, bottom, True)
    return Routing(indices=indices, critical=critical, negligible=negligible)
