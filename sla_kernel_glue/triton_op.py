"""SLA's Triton kernels as torch.library custom ops with autograd, so torch.compile sees one op.

    o_s, o_l = fused_sla(q, k, v, indices, neg_indices, settings)

sla_kernel_glue::sla_fwd(q, k, v, indices, neg_indices, settings) takes (B*H, N, D) q, k, v in
the compute dtype, the critical and negligible block indices (B*H, T_m, *) int32 and the
KernelSettings packed as one int[], and returns o_sparse, o_linear plus what the backward needs;
sla_kernel_glue::sla_bwd(do_s, do_l, saved, settings) takes the ForwardState as one Tensor[] and
returns dq, dk, dv. Gradients flow to q, k, v only. KernelSettings are packed and unpacked here
only: fused_sla is the typed way in.

Memory: what the backward keeps is q, k, v, o_s, o_l (the outputs the caller holds anyway),
O(N) row statistics and O(d^2) states per head; phi(K) and phi(Q)/den are recomputed in the
kernels (or held in a buffer for one kernel only) rather than saved.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .triton_bwd import sla_backward
from .triton_fwd import LINEAR_EMPTY, ForwardState, KernelSettings, sla_forward


def fused_sla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    neg_indices: Tensor,
    settings: KernelSettings,
) -> tuple[Tensor, Tensor]:
    """o_sparse, o_linear (B*H, N, D) by the fused kernels; differentiable in q, k, v."""
    o_s, o_l, *_stats = _sla_fwd(q, k, v, indices, neg_indices, settings.pack())
    return o_s, o_l


# sla_fwd returns o_s, o_l, lse, den, totals: ForwardState's fields after the inputs.
@torch.library.custom_op("sla_kernel_glue::sla_fwd", mutates_args=())
def _sla_fwd(
    q: Tensor, k: Tensor, v: Tensor, indices: Tensor, neg_indices: Tensor, settings: list[int]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return sla_forward(q, k, v, indices, neg_indices, KernelSettings.unpack(settings))


@_sla_fwd.register_fake
def _(q, k, v, indices, neg_indices, settings):
    bh, n, d = q.shape
    stats = q.new_empty((bh, n), dtype=torch.float32)
    return (
        torch.empty_like(q),
        torch.empty_like(q),
        stats,
        torch.empty_like(stats),
        q.new_empty((bh, d + 1, d), dtype=torch.float32),
    )


@torch.library.custom_op("sla_kernel_glue::sla_bwd", mutates_args=())
def _sla_bwd(
    do_s: Tensor, do_l: Tensor, saved: list[Tensor], settings: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    return sla_backward(do_s, do_l, ForwardState(*saved), KernelSettings.unpack(settings))


@_sla_bwd.register_fake
def _(do_s, do_l, saved, settings):
    q, k, v = saved[:3]
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    *tensors, settings = inputs
    ctx.save_for_backward(*ForwardState(*tensors, *output))
    ctx.settings = KernelSettings.unpack(settings)
    # Outputs without a gradient get None, not a zero tensor of their size (lse, den, states).
    ctx.set_materialize_grads(False)


def _backward(ctx, do_s, do_l, *unused_grads):
    saved = ForwardState(*ctx.saved_tensors)
    settings = ctx.settings
    if do_s is None:
        do_s = torch.zeros_like(saved.o_s)
    if do_l is None:
        # No gradient through o_linear: its branch contributes nothing, so skip it (do_l unread).
        do_l, settings = do_s, dataclasses.replace(settings, linear_mode=LINEAR_EMPTY)
    dq, dk, dv = _sla_bwd(do_s, do_l, list(saved), settings.pack())
    return dq, dk, dv, None, None, None


torch.library.register_autograd("sla_kernel_glue::sla_fwd", _backward, setup_context=_setup_context)
