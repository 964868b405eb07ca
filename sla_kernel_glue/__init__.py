"""Sparse-Linear Attention: config, PyTorch reference, Triton kernels, function, module, FLOPs.

Imports torch (and triton where present); never ray or mlflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import SLAConfig, TopkSchedule  # plain Python: what a spec check needs
from .lazy import lazy_attributes

# Everything else imports torch (and triton): loaded on first use, so that parsing a config
# (the CLI, a spec check) does not pay for torch. `from sla_kernel_glue import apply_sla` works.
_LAZY = {
    "export_base_model": "export", "load_exported": "export",
    "AttentionFlops": "flops", "attention_flops": "flops",
    "SLACallInfo": "functional", "sla_attention": "functional",
    "SLAHandle": "injection", "apply_sla": "injection",
    "SparseLinearAttention": "module",
    "SLAOutputs": "reference", "sla_reference": "reference",
    "Routing": "router", "route": "router",
    "SLAStateError": "state", "load_sla_state": "state", "read_sla_state": "state",
    "save_sla_state": "state",
}  # fmt: skip

if TYPE_CHECKING:
    from .export import export_base_model, load_exported
    from .flops import AttentionFlops, attention_flops
    from .functional import SLACallInfo, sla_attention
    from .injection import SLAHandle, apply_sla
    from .module import SparseLinearAttention
    from .reference import SLAOutputs, sla_reference
    from .router import Routing, route
    from .state import SLAStateError, load_sla_state, read_sla_state, save_sla_state

__getattr__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "save_sla_state",
    "read_sla_state",
    "load_sla_state",
    "load_exported",
    "export_base_model",
    "apply_sla",
    "SLAStateError",
    "SLAHandle",
    "AttentionFlops",
    "Routing",
    "SLACallInfo",
    "SLAConfig",
    "SLAOutputs",
    "SparseLinearAttention",
    "TopkSchedule",
    "attention_flops",
    "route",
    "sla_attention",
    "sla_reference",
]
