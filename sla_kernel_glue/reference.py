"""Pure-PyTorch SLA: any device, any float dtype, differentiable by autograd.

This is the oracle for the Triton kernels and the CPU training path. It computes the sparse
branch (exact softmax attention over each query block's critical key blocks, gathered, so the
work scales with topk) and the linear branch (phi(Q) H / (phi(Q) Z + eps) over the marginal
blocks) in chunks of query blocks. Under autograd each chunk is checkpointed, so memory stays
O(chunk * topk * N) per head rather than O(N^2).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from torch.utils.checkpoint import checkpoint

from .config import SLAConfig
from .feature_maps import LINEAR_EPS, feature_map
from .router import Routing, n_blocks, route

# Elements of the largest per-chunk score tensor (B * H * chunk rows * k * blkk); about 64 MiB fp32.
_CHUNK_ELEMENTS = 1 << 24


@dataclasses.dataclass(frozen=True)
class SLAOutputs:
    """The two branches before proj_l: o_sparse + proj_l(o_linear) is SLA's output."""

    o_sparse: torch.Tensor  # (B, H, N, d)
    o_linear: torch.Tensor  # (B, H, N, d)
    routing: Routing

    @property
    def density(self) -> float:
        return self.routing.density


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, N, d) -> (B, H, T, block, d), zero padded."""
    b, h, n, d = x.shape
    t = n_blocks(n, block)
    if t * block != n:
        x = F.pad(x, (0, 0, 0, t * block - n))
    return x.reshape(b, h, t, block, d)


def _linear_states(
    phi_k: torch.Tensor, v: torch.Tensor, blkk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per key block h_j = phi(K_j)^T V_j (B, H, T_n, d, d) and z_j = colsum phi(K_j) (B, H, T_n, d).

    Padding tokens are zero in phi_k (padded after phi), so they add nothing.
    """
    pk = _blocks(phi_k, blkk)
    pv = _blocks(v, blkk)
    h = torch.einsum("bhtnd,bhtne->bhtde", pk, pv)
    z = pk.sum(dim=3)
    return h, z


def _chunk(
    q: torch.Tensor,
    phi_q: torch.Tensor,
    k_blocks: torch.Tensor,
    v_blocks: torch.Tensor,
    key_valid: torch.Tensor,
    h: torch.Tensor,
    z: torch.Tensor,
    indices: torch.Tensor,
    marginal: torch.Tensor,
    scale: float,
    gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of c query blocks.

    q, phi_q: (B, H, c, blkq, d); k_blocks, v_blocks: (B, H, T_n, blkk, d); key_valid: (T_n, blkk);
    h: (B, H, T_n, d, d); z: (B, H, T_n, d); indices: (B, H, c, k); marginal: (B, H, c, T_n)
    float (a learned router's gate already in it); gate: None or a learned router's (B, H, c,
    T_n) zeros, added to each critical block's logits (learned_router.py).
    Returns o_sparse, o_linear, each (B, H, c, blkq, d).
    """
    b, hh, c, bq, d = q.shape
    kc = indices.shape[-1]
    bk = k_blocks.shape[3]
    # Sparse branch: gather the critical key blocks of each row.
    flat = indices.reshape(b, hh, c * kc)  # (B, H, c*k)
    kg = torch.gather(k_blocks, 2, flat[..., None, None].expand(-1, -1, -1, bk, d))
    vg = torch.gather(v_blocks, 2, flat[..., None, None].expand(-1, -1, -1, bk, d))
    kg = kg.reshape(b, hh, c, kc * bk, d)  # (B, H, c, k*blkk, d)
    vg = vg.reshape(b, hh, c, kc * bk, d)
    valid = key_valid[indices].reshape(b, hh, c, 1, kc * bk)  # keys past N are padding
    scores = (q @ kg.transpose(-1, -2)) * scale  # (B, H, c, blkq, k*blkk)
    if gate is not None:  # 0 in value: the logits stay bit for bit; d loss / d gate per block
        g = torch.gather(gate, 3, indices).to(scores.dtype)  # (B, H, c, k)
        scores = scores + g.repeat_interleave(bk, dim=-1)[:, :, :, None, :]
    scores = scores.masked_fill(~valid, float("-inf"))
    o_sparse = torch.softmax(scores, dim=-1) @ vg  # (B, H, c, blkq, d)
    # Linear branch: sum the per-block states over each row's marginal blocks.
    m = marginal.to(h.dtype)
    hm = torch.einsum("bhct,bhtde->bhcde", m, h)  # (B, H, c, d, d)
    zm = torch.einsum("bhct,bhtd->bhcd", m, z)  # (B, H, c, d)
    num = phi_q @ hm  # (B, H, c, blkq, d)
    den = (phi_q * zm[:, :, :, None, :]).sum(-1, keepdim=True) + LINEAR_EPS
    return o_sparse, num / den


def sla_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    config: SLAConfig,
    routing: Routing | None = None,
    chunk_blocks: int | None = None,
) -> SLAOutputs:
    """SLA's two branches on (B, H, N, d) tensors, in the inputs' dtype.

    routing: reuse a routing (else computed from q and k). chunk_blocks: query blocks per chunk
    (default: sized to keep each chunk's scores near 64 MiB in float32).
    """
    _check_qkv(q, k, v)
    b, h, n, d = q.shape
    if routing is None:
        routing = route(q, k, config)
    blocked = _blocked_inputs(q, k, v, config)
    marginal = routing.marginal(config.linear_scope).to(blocked.h.dtype)
    gate = routing.gate
    if gate is not None and config.linear_scope == "marginal":
        # a marginal block's weight is 1 - its gate (0 in value): the gradient of leaving it out
        marginal = marginal - gate.to(marginal.dtype) * (~routing.negligible).to(marginal.dtype)
    t_m = blocked.q.shape[2]
    if chunk_blocks is None:
        chunk_blocks = _default_chunk_blocks(b * h, config, routing)
    use_ckpt = (
        torch.is_grad_enabled()
        and chunk_blocks < t_m
        and any(t is not None and t.requires_grad for t in (q, k, v, gate))
    )
    outs_s, outs_l = [], []
    for i0 in range(0, t_m, chunk_blocks):
        i1 = min(t_m, i0 + chunk_blocks)
        args = (
            blocked.q[:, :, i0:i1],
            blocked.phi_q[:, :, i0:i1],
            blocked.k,
            blocked.v,
            blocked.key_valid,
            blocked.h,
            blocked.z,
            routing.indices[:, :, i0:i1],
            marginal[:, :, i0:i1],
            d**-0.5,
            None if gate is None else gate[:, :, i0:i1],
        )
        if use_ckpt:
            o_s, o_l = checkpoint(_chunk, *args, use_reentrant=False)
        else:
            o_s, o_l = _chunk(*args)
        outs_s.append(o_s)
        outs_l.append(o_l)
    return SLAOutputs(o_sparse=_unblock(outs_s, n), o_linear=_unblock(outs_l, n), routing=routing)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"SLA needs q, k, v of one shape (B, H, N, d); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )


class _Blocked(NamedTuple):
    """The inputs cut into blocks, and the per-key-block linear states."""

    q: torch.Tensor  # (B, H, T_m, blkq, d)
    phi_q: torch.Tensor  # (B, H, T_m, blkq, d)
    k: torch.Tensor  # (B, H, T_n, blkk, d)
    v: torch.Tensor  # (B, H, T_n, blkk, d)
    key_valid: torch.Tensor  # (T_n, blkk): False for the padding past N
    h: torch.Tensor  # (B, H, T_n, d, d)
    z: torch.Tensor  # (B, H, T_n, d)


def _blocked_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: SLAConfig
) -> _Blocked:
    n = q.shape[2]
    bq, bk = config.blkq, config.blkk
    phi = feature_map(config.feature_map)
    phi_q = phi(q)
    hstate, zstate = _linear_states(phi(k), v, bk)
    t_n = n_blocks(n, bk)
    key_valid = (torch.arange(t_n * bk, device=q.device) < n).reshape(t_n, bk)
    return _Blocked(
        q=_blocks(q, bq),
        phi_q=_blocks(phi_q, bq),
        k=_blocks(k, bk),
        v=_blocks(v, bk),
        key_valid=key_valid,
        h=hstate,
        z=zstate,
    )


def _default_chunk_blocks(heads: int, config: SLAConfig, routing: Routing) -> int:
    """Query blocks per chunk that keep a chunk's scores near _CHUNK_ELEMENTS.

    heads: B * H."""
    per_block = max(1, heads * config.blkq * routing.n_critical * config.blkk)
    return max(1, _CHUNK_ELEMENTS // per_block)


def _unblock(chunks: list[torch.Tensor], n: int) -> torch.Tensor:
    """Chunks of (B, H, c, blkq, d) -> (B, H, N, d), the padding dropped."""
    out = torch.cat(chunks, dim=2)  # (B, H, T_m, blkq, d)
    b, h, t_m, bq, d = out.shape
    return out.reshape(b, h, t_m * bq, d)[:, :, :n]
