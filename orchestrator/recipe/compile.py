"""torch.compile for training: each repeated transformer block compiled on its own (regional).

Dense and SLA models compile alike. In an SLA layer only the attention call itself runs eagerly
(the SDPA router and SLA's kernels, with graph breaks where its scope opens and closes): the
layer's projections, norms and RoPE compile as they do without SLA.

Inductor's mix-order reductions are switched off while a compiled model runs: with them, torch
2.10-2.13 computes wrong gradients for the chunks of Wan's shared ``scale_shift_table`` at 16K+
tokens (pytorch/pytorch#193061, silently) or fails in backward with "CompiledFunctionBackward
returned an invalid gradient" once a graph break splits the block (#178080; seen on the H200).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

# Inductor settings for a compiled training run (see the module docstring).
INDUCTOR_SETTINGS = {"triton.mix_order_reduction": False}


def compile_blocks(model: nn.Module, **compile_kwargs) -> int:
    """Compile every repeated block of a diffusers model in place (``torch.compile`` keyword
    arguments pass through); returns how many blocks were compiled."""
    names = getattr(model, "_repeated_blocks", None)
    if not names:
        raise ValueError(
            f"compile: {type(model).__name__} names no repeated blocks (_repeated_blocks) to compile; "
            "set train.compile false for this model"
        )
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"compile: no {', '.join(names)} block found in {type(model).__name__}")
    for block in blocks:
        block.compile(**compile_kwargs)
    return len(blocks)


@contextlib.contextmanager
def compile_settings() -> Iterator[None]:
    """Inductor settings for compiling and running a compiled model; restored on exit."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(INDUCTOR_SETTINGS):
        yield


@contextlib.contextmanager
def compiled_blocks(model: nn.Module, **compile_kwargs) -> Iterator[int]:
    """The model's blocks compiled (under compile_settings) for the duration of a with block;
    yields how many; the model's own forwards are back on exit."""
    with compile_settings():
        count = compile_blocks(model, **compile_kwargs)
        try:
            yield count
        finally:
            uncompile_blocks(model)


def uncompile_blocks(model: nn.Module) -> None:
    """Drop the compiled forwards that compile_blocks installed (nn.Module.compile is in place)."""
    for m in model.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
