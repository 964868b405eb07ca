"""sla_attention: Sparse-Linear Attention as one function, and the choice of backend under it.

    out = sla_attention(q, k, v, config=cfg, proj_l_weight=w, proj_l_bias=b)

The two branches come from the Triton kernels (triton_backend.py) or the PyTorch reference
(reference.py). backend="triton" raises when the kernels cannot run the call; backend="auto" uses
the reference instead, logged once per reason (return_info says which backend ran, so that a
caller can count the fallbacks).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

from .config import SLAConfig, require_config
from .learned_router import learned_route, needs_gate
from .reference import SLAOutputs, sla_reference

log = logging.getLogger(__name__)
_logged_reasons: set[str] = set()


@dataclasses.dataclass(frozen=True)
class SLACallInfo:
    """What one sla_attention call did, besides its output."""

    backend: str  # what computed the two branches: "triton" or "torch" (the reference)
    density: float  # realised density k / T_n of the sparse branch


def sla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    config: SLAConfig,
    proj_l_weight: torch.Tensor | None,
    proj_l_bias: torch.Tensor | None = None,
    use_bf16: bool = True,
    return_info: bool = False,
    router_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, SLACallInfo]:
    """Sparse-Linear Attention: o_sparse + proj_l(o_linear) (mix "add") or alpha * o_sparse +
    (1 - alpha) * proj_l(o_linear) (mix "alpha"), in q's dtype.

    q, k, v: (B, H, N, d) self-attention inputs of one shape and one floating-point dtype;
        softmax scale 1/sqrt(d). No mask, causal attention, dropout or GQA.
    config: the SLA settings (block sizes, topk, kl, feature map, linear_scope, backend).
    proj_l_weight (d, d), proj_l_bias (d,) or None: the linear branch's output projection. They
        compute in q's dtype (cast on the fly, as autocast runs a linear layer; keep them float32).
        Not applied for linear_scope "none" (sparse-only: no linear branch), where both may be None.
    use_bf16: the dtype the Triton kernels compute float32 inputs in: bfloat16, else float16.
    return_info: also return an SLACallInfo (the backend that ran, the realised density).
    router_weights: (Wq, Wk), each (d, d), for router "learned" (learned_router.py).
    alpha: (d,) for mix "alpha", applied here, where the branches combine, for both backends.

    Differentiable in q, k, v, proj_l_weight, proj_l_bias and alpha (not through the block
    choice); in router_weights through the learned router's soft top-k (the reference's).
    """
    _check_inputs(q, k, v, config, proj_l_weight, proj_l_bias)
    _check_learned(q.shape[-1], config, router_weights, alpha)
    outs, backend = sla_branches(
        q, k, v, config=config, use_bf16=use_bf16, router_weights=router_weights
    )
    out = combine_branches(outs, config, proj_l_weight, proj_l_bias, alpha, q.dtype)
    if return_info:
        return out, SLACallInfo(backend=backend, density=outs.density)
    return out


def combine_branches(
    outs: SLAOutputs,
    config: SLAConfig,
    proj_l_weight: torch.Tensor | None,
    proj_l_bias: torch.Tensor | None,
    alpha: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """SLA's output in `dtype` from its two branches: o_sparse + proj_l(o_linear), or with alpha
    alpha * o_sparse + (1 - alpha) * proj_l(o_linear); o_sparse alone for linear_scope "none"."""
    if config.linear_scope == "none":
        # Sparse-only: o_linear is 0 and there is no projection to apply; skipping it saves two
        # passes over (B, H, N, d) each way.
        return outs.o_sparse.to(dtype)
    # proj_l computes in the inputs' dtype from its float32 weights, as autocast runs every
    # other linear layer (the matmul accumulates in float32; the weight gradient arrives in
    # float32). Under bf16 that avoids float32 copies of o_s and o_l, one each way.
    assert proj_l_weight is not None  # _check_inputs: required unless linear_scope "none"
    weight = proj_l_weight.to(dtype)
    bias = None if proj_l_bias is None else proj_l_bias.to(dtype)
    with torch.autocast(device_type=outs.o_sparse.device.type, enabled=False):
        linear = F.linear(outs.o_linear.to(dtype), weight, bias)
        if alpha is None:
            return outs.o_sparse.to(dtype) + linear
        # alpha 1 (its init) with proj_l 0 (its init) gives o_sparse, as "add" does
        a = alpha.to(dtype)
        return a * outs.o_sparse.to(dtype) + (1 - a) * linear


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: SLAConfig,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> None:
    require_config(config)
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "SLA is self-attention on (B, H, N, d) tensors of one shape; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    d = q.shape[-1]
    if weight is not None and tuple(weight.shape) != (d, d):
        raise ValueError(
            f"head dim of q ({d}) must equal head_dim ({weight.shape[-1]}) of proj_l_weight "
            f"{tuple(weight.shape)}, which must be (d, d)"
        )
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"proj_l_bias {tuple(bias.shape)} must be (d,) = ({d},)")
    if weight is None and config.linear_scope != "none":
        raise ValueError(
            f"proj_l_weight is required for linear_scope {config.linear_scope!r}; "
            "only linear_scope 'none' (sparse-only) has no projection"
        )
    if not q.is_floating_point():
        raise ValueError(f"q, k, v must be floating point, got {q.dtype}")


def _check_learned(
    d: int,
    config: SLAConfig,
    router_weights: tuple[torch.Tensor, torch.Tensor] | None,
    alpha: torch.Tensor | None,
) -> None:
    learned = config.router == "learned"
    if learned != (router_weights is not None):
        raise ValueError(
            f"router_weights must be {'given' if learned else 'None'} for router {config.router!r}"
        )
    if (config.mix == "alpha") != (alpha is not None):
        raise ValueError(
            f"alpha must be {'given' if alpha is None else 'None'} for mix {config.mix!r}"
        )
    shapes = {}
    if router_weights is not None:
        wq, wk = router_weights
        shapes = {"router q": tuple(wq.shape), "router k": tuple(wk.shape)}
    if alpha is not None:
        shapes["alpha"] = tuple(alpha.shape)
    for name, shape in shapes.items():
        expected = (d,) if name == "alpha" else (d, d)
        if shape != expected:
            raise ValueError(f"{name} weight {shape} must be {expected} for head dim {d}")


def triton_unsupported_reason(q: torch.Tensor, config: SLAConfig) -> str | None:
    """Why the Triton path cannot run this call, or None when it can."""
    if not q.is_cuda:
        return f"device {q.device.type} is not CUDA"
    try:
        from .triton_backend import unsupported_reason  # imports triton: optional
    except ImportError as exc:  # triton missing, or the kernel module not importable
        if getattr(exc, "name", None) == "triton":
            return "Triton is not installed (pip install 'sla-sweep[gpu]')"
        return f"Triton kernels unavailable ({exc})"
    return unsupported_reason(q, config)


def _reference_dtype(dtype: torch.dtype) -> torch.dtype:
    # The reference computes low-precision inputs in float32: it is the accurate path.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def run_reference(q, k, v, config: SLAConfig, router_weights=None) -> SLAOutputs:
    dt = _reference_dtype(q.dtype)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    routing = None if router_weights is None else learned_route(q, k, config, *router_weights)
    return sla_reference(q, k, v, config=config, routing=routing)


# Why a call whose learned router trains runs in the reference (sla_branches).
ROUTER_GRADIENT_REASON = "the learned router trains through the reference's soft top-k"


def sla_branches(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    config: SLAConfig,
    use_bf16: bool = True,
    router_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[SLAOutputs, str]:
    """Both branches of SLA and the name of the backend that computed them ("triton"/"torch").

    A learned router's hard selection goes to the kernels as the fixed router's does; a call
    whose router needs a gradient (its soft top-k) runs in the reference."""
    if config.backend == "torch":
        return run_reference(q, k, v, config, router_weights), "torch"
    reason = triton_unsupported_reason(q, config)
    if reason is None and router_weights is not None and needs_gate(*router_weights):
        reason = ROUTER_GRADIENT_REASON
    if reason is None:
        from .triton_backend import sla_triton  # imports triton: optional

        outs = sla_triton(q, k, v, config=config, use_bf16=use_bf16, router_weights=router_weights)
        return outs, "triton"
    if config.backend == "triton":
        raise ValueError(f"SLA backend 'triton' cannot run this call: {reason}")
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        log.warning("SLA backend 'auto' uses the PyTorch reference: %s", reason)
    return run_reference(q, k, v, config, router_weights), "torch"
