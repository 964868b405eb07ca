"""The compute precision of inference: "auto" resolved once, and a model's forward run under
torch.autocast at it while its weights stay float32."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "bf16" or "fp32": auto is bf16 on CUDA (the trial's mixed precision there), fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision ({precision!r}) must be one of auto, {', '.join(PRECISIONS)}")
    return precision


@contextlib.contextmanager
def autocast_forward(model: torch.nn.Module, device: torch.device, precision: str):
    """Run model's forward under torch.autocast at `precision` (weights stay float32, as in the
    trial's training and validation), until the block ends; fp32 changes nothing."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield model
        return
    forward, own = model.forward, "forward" in vars(model)

    def autocast(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device.type, dtype=dtype):
            return forward(*args, **kwargs)

    model.forward = autocast
    try:
        yield model
    finally:
        if own:
            model.forward = forward
        else:
            del model.forward  # the class's forward again
