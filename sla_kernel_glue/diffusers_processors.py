"""The diffusers way in: a processor that wraps a layer's own processor and scopes the SDPA redirect.

diffusers attention modules (WanAttention, Attention, ...) hand every call to ``self.processor``;
their processors call torch SDPA directly or through diffusers' attention dispatcher, whose
native backend calls ``torch.nn.functional.scaled_dot_product_attention(query=..., ...)`` on
(B, H, N, d) tensors. SLAProcessor runs the original processor inside the layer's redirect
scope (``sdpa_redirect.open_scope``/``close_scope``) so those calls reach the layer's SLA module.
A call with ``encoder_hidden_states`` (cross-attention) or an ``attention_mask`` runs the
original processor untouched and is counted.

The wrapper holds no weights: the SLA module is registered on the attention module itself
(``<layer>.sla``), so it is in the model's parameters and state_dict whatever the processor is.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .sdpa_redirect import InjectedLayer, close_scope, count_fallback, open_scope

_OWN = ("inner", "layer")


class SLAProcessor:
    """Wraps ``inner`` (the layer's processor); self-attention calls are redirected to SLA.

    Attributes other than ``inner`` and ``layer`` are read from and written to ``inner``, so
    diffusers' ``set_attention_backend`` (which sets ``processor._attention_backend``) still
    reaches the original processor.
    """

    def __init__(self, inner: Any, layer: InjectedLayer) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "layer", layer)
        # diffusers' Attention.forward keeps only the keyword arguments named in
        # inspect.signature(processor.__call__): show the wrapped processor's signature.
        call = _mirror_call(self, inner)
        object.__setattr__(self, "__call__", call)

    def __call__(self, attn: nn.Module, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        return self._run(attn, hidden_states, *args, **kwargs)

    # Under torch.compile the scope is opened and closed by two eager calls (graph breaks), and
    # the SDPA call inside reaches the (eager) redirect: the layer's projections, norms and RoPE
    # stay in the compiled graphs, as they do without SLA.
    def _run(self, attn: nn.Module, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        encoder_hidden_states = args[0] if args else kwargs.get("encoder_hidden_states")
        attention_mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        if self.layer.sla is None or encoder_hidden_states is not None:
            count_fallback(self.layer, "cross_attention")
            return self.inner(attn, hidden_states, *args, **kwargs)
        if attention_mask is not None:
            count_fallback(self.layer, "mask")
            return self.inner(attn, hidden_states, *args, **kwargs)
        scope = open_scope(self.layer)
        try:
            out = self.inner(attn, hidden_states, *args, **kwargs)
        except BaseException:
            close_scope(scope, False)
            raise
        close_scope(scope, True)
        return out

    def __getattr__(self, name: str) -> Any:
        if name in _OWN or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    def __repr__(self) -> str:
        kind = "SLA" if self.layer.sla is not None else "dense, counted"
        return f"SLAProcessor({self.inner!r}, layer={self.layer.path!r}, {kind})"


def _mirror_call(wrapper: SLAProcessor, inner: Any):
    def call(*args: Any, **kwargs: Any) -> Any:
        return wrapper._run(*args, **kwargs)

    try:
        call.__signature__ = inspect.signature(inner.__call__)  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # a builtin callable without a signature: keep the generic one
        pass
    return call


def is_diffusers_attention(module: nn.Module) -> bool:
    """A diffusers attention module: it has a processor and set_processor/get_processor."""
    return (
        hasattr(module, "processor")
        and callable(getattr(module, "set_processor", None))
        and callable(getattr(module, "get_processor", None))
    )


def diffusers_head_dim(module: nn.Module) -> int | None:
    """Head dim of a diffusers attention module (inner_dim // heads), or None if not known."""
    inner_dim, heads = getattr(module, "inner_dim", None), getattr(module, "heads", None)
    if (
        isinstance(inner_dim, int)
        and isinstance(heads, int)
        and heads > 0
        and inner_dim % heads == 0
    ):
        return inner_dim // heads
    return None


def install_processor(module: nn.Module, layer: InjectedLayer) -> Any:
    """Wrap the module's processor; returns the original, for ``restore_processor``."""
    original = module.processor
    if isinstance(original, SLAProcessor):
        raise ValueError(f"layer {layer.path!r} already has SLA injected; remove that handle first")
    if isinstance(original, nn.Module):
        raise ValueError(
            f"layer {layer.path!r} has a trainable processor ({type(original).__name__}); "
            "SLA wraps only plain (weightless) diffusers processors"
        )
    # Plain attribute set, as diffusers' set_processor does for a non-Module processor.
    module.processor = SLAProcessor(original, layer)
    return original


def restore_processor(module: nn.Module, original: Any, path: str) -> None:
    """Put the original processor back; refuse if someone replaced the SLA wrapper meanwhile."""
    current = module.processor
    if not (isinstance(current, SLAProcessor) and current.layer.path == path):
        raise RuntimeError(
            f"layer {path!r}: processor was replaced after SLA injection ({type(current).__name__}); "
            "not restoring over it"
        )
    module.processor = original
