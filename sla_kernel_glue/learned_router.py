"""SLA2's learned router (router "learned"): block scores of pooled q and k through learnable
d x d projections, a hard top-k for the selection and a soft top-k for the router's gradient.

    scores = (pool(q) Wq^T) (pool(smooth-K) Wk^T)^T        (B, H, T_m, T_n), float32 (float64
                                                            for float64 inputs)

Wq and Wk start at the identity, where the scores, and so the selection, are today's fixed
router's (x @ I is exact in floating point). The pooled q and k are detached: the router's
gradient reaches Wq and Wk, never the model through q and k (as today's router takes none).

The selection is always the hard top-k (router.classify_blocks on these scores), in training
too: the forward values of training, inference and export are the same. While the router
trains, the Routing also carries ``gate``: a soft top-k of the scores, straight through,

    soft = sigmoid((scores - tau) / T)    tau: midway between the k-th and (k+1)-th largest
                                          score of the row, T: the row's standard deviation
                                          (both detached)
    gate = soft - soft.detach()           exactly 0 in value, soft's gradient

which the reference (reference.py) adds to each critical block's attention logits and subtracts
from each marginal block's linear weight: the output is bit for bit the hard top-k's, and the
gradient a block's gate receives is d loss / d log(block weight), the sum of the block's logit
gradients (critical) or minus its linear weight's (marginal, linear_scope "marginal" only).
Only the reference applies the gate: a call whose router needs a gradient runs there
(functional.sla_branches); the Triton kernels take the hard selection like the fixed router's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

from .config import SLAConfig
from .router import Routing, block_mean, classify_blocks

# Floor of the soft top-k's temperature (a row of equal scores has standard deviation 0).
SOFT_TEMPERATURE_FLOOR = 1e-6


def learned_scores(
    q: torch.Tensor, k: torch.Tensor, config: SLAConfig, wq: torch.Tensor, wk: torch.Tensor
) -> torch.Tensor:
    """(B, H, T_m, T_n) block scores of the learned router; differentiable in wq and wk."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        qd = q.detach().to(acc)
        kd = k.detach().to(acc)
        kd = kd - kd.mean(dim=-2, keepdim=True)  # smooth-K, as router.block_scores
        pq = block_mean(qd, config.blkq)
        pk = block_mean(kd, config.blkk)
    return projected_scores(pq, pk, wq, wk)


def projected_scores(
    pq: torch.Tensor, pk: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor
) -> torch.Tensor:
    """Scores of pooled (..., T_m, d) q and (..., T_n, d) smooth-K through the projections."""
    pq = F.linear(pq, wq.to(pq.dtype))
    pk = F.linear(pk, wk.to(pk.dtype))
    return pq @ pk.transpose(-1, -2)


def soft_topk(scores: torch.Tensor, kc: int) -> torch.Tensor:
    """sigmoid((scores - tau) / T) per row: about 1 for the kc largest, about 0 for the rest."""
    t_n = scores.shape[-1]
    detached = scores.detach()
    ranked = detached.sort(dim=-1, descending=True).values
    temperature = detached.std(dim=-1, keepdim=True, correction=0).clamp_min(SOFT_TEMPERATURE_FLOOR)
    kth = ranked[..., kc - 1 : kc]
    below = ranked[..., kc : kc + 1] if kc < t_n else kth - temperature
    tau = (kth + below) / 2
    return torch.sigmoid((scores - tau) / temperature)


def needs_gate(wq: torch.Tensor, wk: torch.Tensor) -> bool:
    """Whether this call must carry the router's gradient (grad mode on, projections trainable)."""
    return torch.is_grad_enabled() and (wq.requires_grad or wk.requires_grad)


def learned_route(
    q: torch.Tensor,
    k: torch.Tensor,
    config: SLAConfig,
    wq: torch.Tensor,
    wk: torch.Tensor,
) -> Routing:
    """The hard top-k of the learned scores; with the straight-through gate when it trains."""
    if not needs_gate(wq, wk):
        with torch.no_grad():
            return classify_blocks(learned_scores(q, k, config, wq, wk), config)
    scores = learned_scores(q, k, config, wq, wk)
    routing = classify_blocks(scores.detach(), config)
    soft = soft_topk(scores, routing.n_critical)
    return Routing(
        indices=routing.indices,
        critical=routing.critical,
        negligible=routing.negligible,
        gate=soft - soft.detach(),
    )
