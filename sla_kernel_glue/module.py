"""SparseLinearAttention: the nn.Module that owns one attention layer's proj_l."""

from __future__ import annotations

import collections
import logging

import torch
from torch import nn

from .config import SLAConfig, require_config
from .functional import sla_attention

log = logging.getLogger(__name__)


class SparseLinearAttention(nn.Module):
    """Sparse-Linear Attention on (B, H, N, d) tensors, at the settings of one SLAConfig.

    The thin module over ``sla_attention``: it holds proj_l and counts calls per backend. It runs
    at a fixed topk: a topk schedule's end until ``set_topk`` moves it along the schedule (the
    schedule itself stays with the caller, SLAHandle.set_step). proj_l is a d -> d linear layer,
    zero-initialised, kept in float32 whatever the model is cast to; it computes in the dtype of
    q, k, v (float32 weights cast on the fly, like autocast's linear layers).

    With router "learned" it also holds router_q and router_k (d -> d, no bias, identity at
    init: the selection starts as the fixed router's); with mix "alpha", alpha (d,), one per
    head-dim channel, shared by the heads and the blocks, 1 at init: with proj_l 0 the output
    starts as mix "add"'s (learned_router.py, functional.sla_attention). All float32, like proj_l.
    """

    def __init__(self, head_dim: int, config: SLAConfig, *, use_bf16: bool = True) -> None:
        super().__init__()
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
            raise ValueError(f"head_dim ({head_dim!r}) must be a positive integer")
        require_config(config)
        # the config as it came; a schedule's is left out (its topk is already the end)
        self.config = config if config.topk_schedule is None else config.replace(topk_schedule=None)
        self.head_dim = head_dim
        self.use_bf16 = bool(use_bf16)
        self.proj_l = nn.Linear(head_dim, head_dim, dtype=torch.float32)
        nn.init.zeros_(self.proj_l.weight)  # training starts as sparse-only attention
        nn.init.zeros_(self.proj_l.bias)
        if config.linear_scope == "none":
            # Sparse-only: no linear branch, so proj_l stays exactly 0 (its bias would otherwise
            # train into a constant offset). Frozen parameters are also what DDP expects.
            self.proj_l.requires_grad_(False)
        if config.router == "learned":
            self.router_q = _identity(head_dim)
            self.router_k = _identity(head_dim)
        if config.mix == "alpha":
            self.alpha = nn.Parameter(torch.ones(head_dim, dtype=torch.float32))
        # Calls per backend ("triton", "torch"); the injection layer adds its own counters.
        self.backend_calls: collections.Counter[str] = collections.Counter()
        self._warned_cast = False

    def set_topk(self, topk: float) -> None:
        """Run at another topk from the next call on (a topk schedule's step); the rest stays."""
        self.config = self.config.replace(topk=topk)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"head_dim={self.head_dim}, topk={c.topk}, blkq={c.blkq}, blkk={c.blkk}, "
            f"feature_map={c.feature_map!r}, kl={c.kl}, linear_scope={c.linear_scope!r}, "
            f"backend={c.backend!r}"
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        return_sparsity: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, float]:
        """SLA on (B, H, N, d) q, k, v; with return_sparsity also the realised density k/T_n."""
        out, info = sla_attention(
            q,
            k,
            v,
            config=self.config,
            proj_l_weight=self.proj_l.weight,
            proj_l_bias=self.proj_l.bias,
            use_bf16=self.use_bf16,
            return_info=True,
            router_weights=(
                (self.router_q.weight, self.router_k.weight)
                if self.config.router == "learned"
                else None
            ),
            alpha=self.alpha if self.config.mix == "alpha" else None,
        )
        self.backend_calls[info.backend] += 1
        if return_sparsity:
            return out, info.density
        return out

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # model.to(torch.bfloat16) must not cast proj_l (nor the learned parts): keep their exact
        # float32 values.
        saved = {name: p.detach() for name, p in self.named_parameters()}
        result = super()._apply(fn, recurse)
        restored = False
        for name, p in self.named_parameters():
            if p.dtype != torch.float32:
                p.data = saved[name].to(device=p.device)
                if p.grad is not None:
                    p.grad = p.grad.to(torch.float32)
                restored = True
        if restored and not self._warned_cast:
            self._warned_cast = True
            log.warning("SLA keeps proj_l in float32; the dtype cast was applied to the rest only")
        return result


def _identity(head_dim: int) -> nn.Linear:
    layer = nn.Linear(head_dim, head_dim, bias=False, dtype=torch.float32)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(head_dim, dtype=torch.float32))
    return layer
