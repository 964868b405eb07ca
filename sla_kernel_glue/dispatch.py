"""Choose the backend for one SLA call: the Triton kernels or the PyTorch reference.

backend="triton" raises when the kernels cannot run the call; backend="auto" uses the reference
instead, and that fallback is counted by the caller and logged once per reason.
"""

from __future__ import annotations

import logging

import torch

from .config import SLAConfig
from .reference import SLAOutputs, sla_reference

log = logging.getLogger(__name__)
_logged_reasons: set[str] = set()


def triton_unsupported_reason(q: torch.Tensor, config: SLAConfig) -> str | None:
    """Why the Triton path cannot run this call, or None when it can."""
    if not q.is_cuda:
        return f"device {q.device.type} is not CUDA"
    try:
        from .triton_kernels import unsupported_reason
    except ImportError as exc:  # triton missing, or the kernel module not importable
        return f"Triton kernels unavailable ({exc})"
    return unsupported_reason(q, config)


def _reference_dtype(dtype: torch.dtype) -> torch.dtype:
    # The reference computes low-precision inputs in float32: it is the accurate path.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def run_reference(q, k, v, config: SLAConfig) -> SLAOutputs:
    dt = _reference_dtype(q.dtype)
    return sla_reference(q.to(dt), k.to(dt), v.to(dt), config=config)


def sla_branches(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, config: SLAConfig, use_bf16: bool = True
) -> tuple[SLAOutputs, str]:
    """Both branches of SLA and the name of the backend that computed them ("triton"/"torch")."""
    if config.backend == "torch":
        return run_reference(q, k, v, config), "torch"
    reason = triton_unsupported_reason(q, config)
    if reason is None:
        from .triton_kernels import sla_triton

        return sla_triton(q, k, v, config=config, use_bf16=use_bf16), "triton"
    if config.backend == "triton":
        raise ValueError(f"SLA backend 'triton' cannot run this call: {reason}")
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        log.warning("SLA backend 'auto' uses the PyTorch reference: %s", reason)
    return run_reference(q, k, v, config), "torch"
