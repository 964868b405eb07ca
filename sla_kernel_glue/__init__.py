"""Sparse-Linear Attention: config, PyTorch reference, Triton kernels, function, module, FLOPs.

Imports torch (and triton where present); never ray or mlflow.
"""

from .config import SLAConfig, TopkSchedule
from .export import export_base_model, load_exported
from .flops import AttentionFlops, attention_flops
from .functional import SLACallInfo, sla_attention
from .injection import SLAHandle, apply_sla
from .module import SparseLinearAttention
from .reference import SLAOutputs, sla_reference
from .router import Routing, route
from .state import SLAStateError, load_sla_state, read_sla_state, save_sla_state

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
