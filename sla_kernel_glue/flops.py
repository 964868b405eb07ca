"""Analytic FLOPs of dense attention and of SLA (sla-algorithm.md, 'FLOPs')."""

from __future__ import annotations

import dataclasses

from .config import SLAConfig
from .router import n_blocks


@dataclasses.dataclass(frozen=True)
class AttentionFlops:
    dense: float  # full attention for the same shapes
    sparse: float  # SLA's sparse branch: density * dense
    linear: float  # linear branch and proj_l
    router: float  # pooling and block scores (a learned router: its projections, and its backward)
    density: float  # realised k / T_n

    @property
    def sla(self) -> float:
        return self.sparse + self.linear + self.router

    @property
    def ratio(self) -> float:
        """SLA FLOPs over dense FLOPs."""
        return self.sla / self.dense


def attention_flops(
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    config: SLAConfig | None = None,
    *,
    backward: bool = False,
) -> AttentionFlops:
    """FLOPs of one attention call, forward or forward+backward.

    Dense: 4 B H N^2 d forward, 14 B H N^2 d forward+backward. Sparse: density times dense.
    Linear with proj_l: 6 B H N d^2 forward, 18 forward+backward (none for linear_scope "none").
    Router: 2 B H T_m T_n d plus 4 B H N d pooling, forward only. A learned router (router
    "learned") adds its two projections of the pooled rows, 2 B H (T_m + T_n) d^2, and with
    backward its training: the scores' gradient 4 B H T_m T_n d, the projections' weight gradient
    2 B H (T_m + T_n) d^2 (the pooled inputs take none) and the soft top-k's sort, counted as
    nothing. Mix "alpha" adds 3 B H N d to the linear count forward, 7 forward+backward. With
    config None, SLA is off: only the dense count.
    """
    sizes = {"batch": batch, "heads": heads, "seq_len": seq_len, "head_dim": head_dim}
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} ({value!r}) must be a positive integer")
    bh = batch * heads
    dense = (14 if backward else 4) * bh * seq_len**2 * head_dim
    if config is None:
        return AttentionFlops(
            dense=float(dense), sparse=float(dense), linear=0.0, router=0.0, density=1.0
        )
    t_m, t_n = n_blocks(seq_len, config.blkq), n_blocks(seq_len, config.blkk)
    density = config.critical_blocks(t_n) / t_n
    linear = (
        0 if config.linear_scope == "none" else (18 if backward else 6) * bh * seq_len * head_dim**2
    )
    router = 2 * bh * t_m * t_n * head_dim + 4 * bh * seq_len * head_dim
    if config.router == "learned":
        projections = 2 * bh * (t_m + t_n) * head_dim**2
        router += projections
        if backward:
            router += 4 * bh * t_m * t_n * head_dim + projections
    if config.mix == "alpha":
        linear += (7 if backward else 3) * bh * seq_len * head_dim
    return AttentionFlops(
        dense=float(dense),
        sparse=float(density * dense),
        linear=float(linear),
        router=float(router),
        density=density,
    )
