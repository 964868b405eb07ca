"""Redirect torch's scaled_dot_product_attention to one layer's SLA module, only inside that layer.

The one mechanism behind both ways into a model (diffusers processors and plain modules): while
an injected layer runs, ``layer_scope(layer)`` makes ``layer`` the active layer of the current
thread/context (a ContextVar) and keeps ``torch.nn.functional.scaled_dot_product_attention``
pointed at ``_sla_or_dense_sdpa``, which sends a call to the active layer's SLA module when SLA
can compute it, and to torch's own SDPA otherwise (counted per layer and reason, logged once).

- Scoped, not process-wide: the redirect is installed when the first scope opens and torch's
  function is put back when the last one closes (a count of open scopes under a lock), in
  ``finally``.
- Threads: another thread that calls SDPA while a scope is open sees no active layer in its own
  context and gets torch's dense SDPA; so does a bare call outside any scope.
- Re-entrant: scopes nest (an injected layer inside another); the innermost layer is active.
- Keyword arguments: diffusers calls SDPA as ``query=, key=, value=, attn_mask=, dropout_p=,
  is_causal=, scale=, enable_gqa=``; the stand-in takes every argument by position or by name.
- torch.compile: opening and closing a scope, counting a fallback and the stand-in itself run
  eagerly (``torch.compiler.disable``; a graph break each), so the code around the attention
  call (a layer's projections, norms, RoPE) compiles with SLA injected as it does without.
- Scale: SLA computes softmax(q k^T / sqrt(d)). A call with another ``scale`` stays dense
  (reason "scale"); ``scale=None`` or 1/sqrt(d) goes to SLA.
- Bypass: inside ``dense_attention()`` every call of this context is torch's dense SDPA, not
  counted as a fallback (the caller asked for it): the model as it was before injection, e.g. a
  full-attention teacher that shares the student's weights.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import logging
import math
import threading
from collections.abc import Iterator

import torch
from torch.nn import functional

from .module import SparseLinearAttention

log = logging.getLogger(__name__)

# Why a call stayed dense. Each one is counted per layer and logged once per handle.
FALLBACK_REASONS = (
    "cross_attention",  # query and key lengths differ, or a diffusers cross-attention layer
    "mask",  # attn_mask given
    "causal",  # is_causal=True
    "dropout",  # dropout_p > 0
    "gqa",  # fewer key/value heads than query heads
    "scale",  # a softmax scale other than 1/sqrt(d)
    "shape",  # not (B, H, N, d), batch sizes differ, or the value head dim differs
    "head_dim",  # head dim differs from the layer's SLA module
    "no_sdpa_call",  # the layer ran without calling torch SDPA (e.g. another attention backend)
)


@dataclasses.dataclass(eq=False)
class InjectedLayer:
    """One injected layer: its SLA module (None for a counted dense-only layer) and counters."""

    path: str
    sla: SparseLinearAttention | None
    fallbacks: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    sla_calls: int = 0
    # dtype of q/k/v in this layer's latest SLA call (the attention compute dtype), None before.
    last_dtype: torch.dtype | None = None
    logged: set[str] | None = None  # reasons already logged, shared by all layers of one handle

    def count_fallback(self, reason: str) -> None:
        """Count one dense call for ``reason`` and log it the first time the handle sees it."""
        self.fallbacks[reason] += 1
        if self.logged is not None and reason not in self.logged:
            self.logged.add(reason)
            log.warning(
                "SLA: dense attention in layer %s (reason %r); further %r fallbacks are counted "
                "per layer in handle.fallback_counts(), not logged",
                self.path,
                reason,
                reason,
            )


@dataclasses.dataclass(eq=False)
class _Frame:
    layer: InjectedLayer
    sdpa_calls: int = 0


_active: contextvars.ContextVar[_Frame | None] = contextvars.ContextVar(
    "sla_active_layer", default=None
)
_bypass: contextvars.ContextVar[bool] = contextvars.ContextVar("sla_bypass", default=False)
_lock = threading.Lock()
_installed = 0  # open scopes, all threads together
_torch_sdpa = functional.scaled_dot_product_attention  # torch's own function, captured at import


def redirect_installed() -> bool:
    """True while some layer scope is open and _sla_or_dense_sdpa stands in for torch's SDPA."""
    return functional.scaled_dot_product_attention is _sla_or_dense_sdpa


def _install() -> None:
    global _installed
    with _lock:
        if _installed == 0:
            if functional.scaled_dot_product_attention is not _torch_sdpa:
                raise RuntimeError(
                    "torch.nn.functional.scaled_dot_product_attention is already replaced by "
                    f"{functional.scaled_dot_product_attention!r}; SLA's redirect needs torch's own function"
                )
            functional.scaled_dot_product_attention = _sla_or_dense_sdpa
        _installed += 1


def _uninstall() -> None:
    global _installed
    with _lock:
        _installed -= 1
        if _installed == 0:
            functional.scaled_dot_product_attention = _torch_sdpa


@contextlib.contextmanager
def layer_scope(layer: InjectedLayer) -> Iterator[None]:
    """Make ``layer`` the active layer while the block runs; count a run with no SDPA call."""
    scope = open_scope(layer)
    ok = False
    try:
        yield
        ok = True
    finally:
        close_scope(scope, ok)


# open_scope/close_scope are what layer_scope does, as two calls that torch.compile runs eagerly
# (one graph break each): code between them, such as a diffusers processor's projections and
# RoPE, still compiles, and its SDPA call reaches _sla_or_dense_sdpa (also run eagerly).
@torch.compiler.disable
def open_scope(layer: InjectedLayer) -> tuple[_Frame, contextvars.Token]:
    """Install the redirect and make ``layer`` the active layer; pair with close_scope."""
    _install()
    frame = _Frame(layer)
    return frame, _active.set(frame)


@torch.compiler.disable
def close_scope(scope: tuple[_Frame, contextvars.Token], ok: bool) -> None:
    """End open_scope's scope; ok (no exception): count a run that made no SDPA call."""
    frame, token = scope
    _active.reset(token)
    _uninstall()
    if ok and frame.sdpa_calls == 0:
        frame.layer.count_fallback("no_sdpa_call")


@contextlib.contextmanager
def dense_attention() -> Iterator[None]:
    """Within the block (this thread/context), injected layers compute torch's dense SDPA."""
    token = _bypass.set(True)
    try:
        yield
    finally:
        _bypass.reset(token)


@torch.compiler.disable
def count_fallback(layer: InjectedLayer, reason: str) -> None:
    """layer.count_fallback, run eagerly under torch.compile (a counter is not graph material);
    nothing inside dense_attention(), where dense is what was asked for."""
    if not _bypass.get():
        layer.count_fallback(reason)


def dense_reason(
    layer: InjectedLayer,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
) -> str | None:
    """Why SLA cannot compute this call (a FALLBACK_REASONS entry), or None when it can."""
    if layer.sla is None:
        return "cross_attention"
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return "shape"
    if key.shape[-2] != query.shape[-2] or value.shape[-2] != query.shape[-2]:
        return "cross_attention"
    if attn_mask is not None:
        return "mask"
    if is_causal:
        return "causal"
    if dropout_p > 0.0:
        return "dropout"
    if key.shape[1] != query.shape[1] or value.shape[1] != query.shape[1]:
        return "gqa"
    if key.shape[0] != query.shape[0] or value.shape[0] != query.shape[0]:
        return "shape"
    if key.shape[-1] != query.shape[-1] or value.shape[-1] != query.shape[-1]:
        return "shape"
    if query.shape[-1] != layer.sla.head_dim:
        return "head_dim"
    if scale is not None and not math.isclose(scale, query.shape[-1] ** -0.5, rel_tol=1e-6):
        return "scale"
    return None


@torch.compiler.disable  # eager under torch.compile: the graph breaks at the attention call only
def _sla_or_dense_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """torch's SDPA signature: the active layer's SLA where it can compute the call, else dense."""
    frame = _active.get()
    args = (query, key, value)
    kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    if enable_gqa:
        kwargs["enable_gqa"] = True  # only passed when set: older torch lacks the argument
    if frame is None:  # another thread, or a call outside any injected layer: dense
        return _torch_sdpa(*args, **kwargs)
    frame.sdpa_calls += 1
    if _bypass.get():  # dense_attention(): asked for, not a fallback
        return _torch_sdpa(*args, **kwargs)
    layer = frame.layer
    reason = dense_reason(layer, query, key, value, attn_mask, dropout_p, is_causal, scale)
    if reason is not None:
        layer.count_fallback(reason)
        return _torch_sdpa(*args, **kwargs)
    assert layer.sla is not None  # dense_reason returns "cross_attention" for dense-only layers
    layer.sla_calls += 1
    layer.last_dtype = query.dtype
    return layer.sla(query, key, value)
