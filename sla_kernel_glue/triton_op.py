"""SLA's Triton kernels as torch.library custom ops with autograd, so torch.compile sees one op.

sla_kernel_glue::sla_fwd takes (B*H, N, D) q, k, v in the compute dtype and the critical block
indices (B*H, T_m, k) int32, and returns o_sparse, o_linear plus what the backward needs;
sla_kernel_glue::sla_bwd returns dq, dk, dv. Gradients flow to q, k, v only.

Memory: what the backward keeps is q, k, v, o_s, o_l (the outputs the caller holds anyway),
O(N) row statistics and O(d^2) states per head; phi(K) and phi(Q)/den are recomputed in the
kernels rather than stored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .triton_bwd import sla_backward
from .triton_fwd import LINEAR_EMPTY, sla_forward

# sla_fwd returns o_s, o_l, lse, den, H hi, H lo, Z.


@torch.library.custom_op("sla_kernel_glue::sla_fwd", mutates_args=())
def sla_fwd_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    neg_indices: Tensor,
    blkq: int,
    blkk: int,
    fmap: int,
    linear_mode: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return sla_forward(q, k, v, indices, neg_indices, blkq, blkk, fmap, linear_mode, eps)


@sla_fwd_op.register_fake
def _(q, k, v, indices, neg_indices, blkq, blkk, fmap, linear_mode, eps):
    bh, n, d = q.shape
    stats = q.new_empty((bh, n), dtype=torch.float32)
    return (
        torch.empty_like(q),
        torch.empty_like(q),
        stats,
        torch.empty_like(stats),
        q.new_empty((bh, d, d)),
        q.new_empty((bh, d, d)),
        q.new_empty((bh, d), dtype=torch.float32),
    )


@torch.library.custom_op("sla_kernel_glue::sla_bwd", mutates_args=())
def sla_bwd_op(
    do_s: Tensor,
    do_l: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o_s: Tensor,
    o_l: Tensor,
    lse: Tensor,
    den: Tensor,
    h_hi: Tensor,
    h_lo: Tensor,
    ztot: Tensor,
    indices: Tensor,
    neg_indices: Tensor,
    blkq: int,
    blkk: int,
    fmap: int,
    linear_mode: int,
) -> tuple[Tensor, Tensor, Tensor]:
    return sla_backward(
        do_s,
        do_l,
        q,
        k,
        v,
        o_s,
        o_l,
        lse,
        den,
        h_hi,
        h_lo,
        ztot,
        indices,
        neg_indices,
        blkq,
        blkk,
        fmap,
        linear_mode,
    )


@sla_bwd_op.register_fake
def _(do_s, do_l, q, k, v, *rest):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, indices, neg_indices, blkq, blkk, fmap, linear_mode, _eps = inputs
    o_s, o_l, lse, den, h_hi, h_lo, ztot = output
    ctx.save_for_backward(q, k, v, o_s, o_l, lse, den, h_hi, h_lo, ztot, indices, neg_indices)
    ctx.settings = (blkq, blkk, fmap, linear_mode)
    # Outputs without a gradient get None, not a zero tensor of their size (lse, den, states).
    ctx.set_materialize_grads(False)


def _backward(ctx, do_s, do_l, *unused_grads):
    q, k, v, o_s, o_l, lse, den, h_hi, h_lo, ztot, indices, neg_indices = ctx.saved_tensors
    blkq, blkk, fmap, linear_mode = ctx.settings
    if do_s is None:
        do_s = torch.zeros_like(o_s)
    if do_l is None:
        # No gradient through o_linear: its branch contributes nothing, so skip it (do_l unread).
        do_l, linear_mode = do_s, LINEAR_EMPTY
    dq, dk, dv = sla_bwd_op(
        do_s,
        do_l,
        q,
        k,
        v,
        o_s,
        o_l,
        lse,
        den,
        h_hi,
        h_lo,
        ztot,
        indices,
        neg_indices,
        blkq,
        blkk,
        fmap,
        linear_mode,
    )
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd("sla_kernel_glue::sla_fwd", _backward, setup_context=_setup_context)
