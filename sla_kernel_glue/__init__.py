"""Sparse-Linear Attention: config, PyTorch reference, Triton kernels, module, FLOPs.

Imports torch (and triton where present); never ray or mlflow.
"""

from .config import SLAConfig
from .flops import AttentionFlops, attention_flops
from .module import SparseLinearAttention
from .reference import SLAOutputs, sla_reference
from .router import Routing, route

__all__ = [
    "AttentionFlops",
    "Routing",
    "SLAConfig",
    "SLAOutputs",
    "SparseLinearAttention",
    "attention_flops",
    "route",
    "sla_reference",
]
