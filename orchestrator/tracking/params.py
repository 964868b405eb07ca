"""Settings as MLflow params: nested mappings -> dotted keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flat_params(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """{'topk': 0.1} -> {'sla.topk': 0.1}; nested mappings become dotted keys."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flat_params(name, value))
        else:
            out[name] = value
    return out
