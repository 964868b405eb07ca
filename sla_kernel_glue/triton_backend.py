"""SLA's Triton backend: what it supports, and sla_triton, the two branches by the kernels.

Layers (style.md): router.py / reference.py (PyTorch oracle) -> triton_router.py, triton_fwd.py,
triton_bwd.py (kernels and launchers) -> triton_op.py (custom ops + autograd) -> sla_triton (this
file) -> functional.sla_attention (the public function, which picks this backend or the
reference) -> module.SparseLinearAttention.

Precision: float16 and bfloat16 inputs compute in their own dtype; float32 inputs compute in
bfloat16 (use_bf16=True) or float16 (use_bf16=False). Matmul accumulators and all row statistics
are float32. Outputs come back in the input dtype.

Not supported here (unsupported_reason says so; backend "auto" then uses the reference): head
dims other than 16, 32, 64, 128; block sizes other than 16, 32, 64, 128; float64; devices other
than CUDA (CPU runs only under TRITON_INTERPRET=1, for tests). Negligible blocks (kl > 0) are
supported: both branches skip them (their linear states are subtracted like the critical ones).
"""

from __future__ import annotations

import torch

from .config import SLAConfig
from .reference import SLAOutputs
from .router import n_blocks
from .triton_fwd import (
    FMAP_CODES,
    INTERPRET,
    LINEAR_ALL,
    LINEAR_EMPTY,
    LINEAR_MARGINAL,
    KernelSettings,
)
from .triton_op import fused_sla
from .triton_router import route_for_kernels

HEAD_DIMS = (16, 32, 64, 128)
BLOCK_SIZES = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unsupported_reason(q: torch.Tensor, config: SLAConfig) -> str | None:
    """Why the Triton kernels cannot run SLA on q's shape, dtype and device with config; else None."""
    if q.dim() != 4:
        return f"q must be (B, H, N, d), got {q.dim()} dimensions"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} is not one of float16, bfloat16, float32"
    d = q.shape[-1]
    if d not in HEAD_DIMS:
        return f"head dim {d} is not one of {', '.join(map(str, HEAD_DIMS))}"
    if q.shape[-2] < 1:
        return "sequence length N must be at least 1"
    for name in ("blkq", "blkk"):
        value = getattr(config, name)
        if value not in BLOCK_SIZES:
            return f"{name} {value} is not one of {', '.join(map(str, BLOCK_SIZES))}"
    if not q.is_cuda and not (INTERPRET and q.device.type == "cpu"):
        return f"device {q.device.type} is not CUDA (CPU only under TRITON_INTERPRET=1)"
    return None


def compute_dtype(dtype: torch.dtype, use_bf16: bool) -> torch.dtype:
    """The 16-bit dtype the kernels compute in for inputs of dtype."""
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    return torch.bfloat16 if use_bf16 else torch.float16


def linear_mode(config: SLAConfig, n_critical: int, n_key_blocks: int) -> int:
    """LINEAR_ALL for scope "all"; LINEAR_EMPTY when every key block is critical; else marginal."""
    if config.linear_scope == "all":
        return LINEAR_ALL
    if config.linear_scope == "none":
        return LINEAR_EMPTY  # sparse-only: o_linear = 0
    if n_critical + config.negligible_blocks(n_key_blocks) >= n_key_blocks:
        return LINEAR_EMPTY  # no marginal block: o_linear = 0 exactly, not (total - total) / eps
    return LINEAR_MARGINAL


def negligible_indices(
    negligible: torch.Tensor, config: SLAConfig, n_key_blocks: int
) -> torch.Tensor:
    """(B, H, T_m, n_neg) ascending indices of the negligible blocks the linear branch must skip.

    Empty (n_neg = 0) without kl, and for linear_scope "all", which covers every block.
    """
    n_neg = config.negligible_blocks(n_key_blocks)
    if n_neg == 0 or config.linear_scope != "marginal":
        return negligible.new_zeros((*negligible.shape[:-1], 0), dtype=torch.int64)
    # Each row holds exactly n_neg True entries: their positions are its top n_neg.
    return negligible.float().topk(n_neg, dim=-1).indices.sort(dim=-1).values


def sla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    config: SLAConfig,
    use_bf16: bool = True,
    router_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SLAOutputs:
    """SLA's two branches (before proj_l) by the fused Triton kernels; differentiable in q, k, v.

    router_weights: a learned router's (Wq, Wk): its hard selection (no gradient) goes in."""
    reason = unsupported_reason(q, config)
    if reason is not None:
        raise ValueError(f"SLA Triton kernels cannot run this call: {reason}")
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"SLA needs q, k, v of one shape (B, H, N, d); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    cdt = compute_dtype(q.dtype, use_bf16)
    if INTERPRET and cdt == torch.bfloat16:
        raise ValueError(
            "bfloat16 matmuls are wrong under TRITON_INTERPRET=1; use float16 inputs or use_bf16=False"
        )
    b, h, n, d = q.shape
    routing, indices = route_for_kernels(
        q, k, config, router_weights
    )  # indices: (B*H, T_m, k) int32
    t_m, kc = indices.shape[-2:]
    mode = linear_mode(config, kc, n_blocks(n, config.blkk))
    if mode == LINEAR_MARGINAL and config.negligible_blocks(n_blocks(n, config.blkk)) > 0:
        neg_indices = negligible_indices(routing.negligible, config, n_blocks(n, config.blkk))
        neg_indices = neg_indices.reshape(b * h, t_m, -1).to(torch.int32).contiguous()
    else:
        neg_indices = indices[..., :0]  # none: an empty view, no allocation

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.to(cdt).reshape(b * h, n, d).contiguous()

    settings = KernelSettings(
        blkq=config.blkq,
        blkk=config.blkk,
        fmap=FMAP_CODES[config.feature_map],
        linear_mode=mode,
    )
    o_s, o_l = fused_sla(heads(q), heads(k), heads(v), indices, neg_indices, settings)
    o_sparse = o_s.reshape(b, h, n, d).to(q.dtype)
    o_linear = o_l.reshape(b, h, n, d).to(q.dtype)
    return SLAOutputs(o_sparse=o_sparse, o_linear=o_linear, routing=routing)
