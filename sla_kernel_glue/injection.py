"""Put SLA into a model, one SLA module per self-attention layer, reversibly.

    handle = apply_sla(model, SLAConfig(topk=0.1))  # or: with apply_sla(model, cfg) as handle: ...
    handle.layers        # {"blocks.0.attn1": SparseLinearAttention, ...}
    handle.set_step(s)   # a topk schedule: every layer at config.topk_at(s) (they start at its end)
    with handle.dense(): model(x)  # every injected layer computes dense attention, uncounted
    handle.remove()      # the model is exactly as before

Each selected layer gets its own SparseLinearAttention registered as the submodule ``sla`` of
the attention module (so its proj_l is ``<layer>.sla.proj_l.weight`` in the state_dict, and
model.parameters(), optimizers, DDP and accelerate see it). Calls reach it through one
mechanism, torch SDPA redirected to SLA within the layer (sdpa_redirect.py), entered two ways:

- diffusers attention modules: the layer's processor is wrapped (diffusers_processors.py);
  diffusers cross-attention layers (``is_cross_attention``) get no SLA module but a counting
  wrapper, so their dense calls show up in ``fallback_counts()``.
- plain PyTorch modules that call torch.nn.functional.scaled_dot_product_attention: forward
  pre/post hooks (the post hook runs even when forward raises) open and close the scope.

Which layers: ``targets=None`` picks diffusers self-attention modules when the model has any,
else the innermost modules whose class name contains "Attention". Or pass module paths, module
classes, or a predicate ``(path, module) -> bool``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .config import SLAConfig, require_config
from .diffusers_processors import (
    diffusers_head_dim,
    install_processor,
    is_diffusers_attention,
    restore_processor,
)
from .module import SparseLinearAttention
from .sdpa_redirect import InjectedLayer, dense_attention, layer_scope

log = logging.getLogger(__name__)

SLA_ATTR = "sla"  # name of the SLA submodule on each injected attention module

Targets = Iterable[str] | type | tuple[type, ...] | Callable[[str, nn.Module], bool] | None
HeadDim = int | Callable[[str, nn.Module], int] | None

# model -> its live handle; not an attribute on the model, so remove() leaves nothing behind.
_handles: weakref.WeakKeyDictionary[nn.Module, SLAHandle] = weakref.WeakKeyDictionary()

_HEAD_DIM_ATTRS = ("head_dim", "dim_head", "d_head", "attention_head_dim")
_WIDTH_ATTRS = ("embed_dim", "inner_dim", "hidden_size", "dim", "d_model")
_HEADS_ATTRS = ("num_heads", "heads", "n_heads", "n_head", "num_attention_heads")


class SLAHandle:
    """What apply_sla put into a model; ``remove()`` (or leaving ``with``) takes it out again."""

    def __init__(self, model: nn.Module, config: SLAConfig) -> None:
        # weak: the registry maps model -> handle, and a strong ref back would keep models alive
        self._model = weakref.ref(model)
        self.config = config
        self.injected: dict[str, InjectedLayer] = {}  # every wrapped layer, SLA or dense-only
        self._attention: dict[str, nn.Module] = {}  # the attention module of each SLA layer
        self._undo: list[Callable[[], None]] = []
        self._logged: set[str] = set()
        self.removed = False

    @property
    def model(self) -> nn.Module:
        """The model SLA was put into (unwrapped from DDP/compile)."""
        model = self._model()
        if model is None:
            raise ValueError("the model of this SLAHandle no longer exists")
        return model

    @property
    def layers(self) -> dict[str, SparseLinearAttention]:
        """SLA modules by the module path of their attention layer."""
        return {path: r.sla for path, r in self.injected.items() if r.sla is not None}

    @property
    def topk(self) -> float:
        """The topk the SLA layers run at now: config.topk (a schedule's end) until set_step."""
        values = {sla.config.topk for sla in self.layers.values()}
        if len(values) != 1:
            raise RuntimeError(f"the SLA layers run at different topk values {sorted(values)}")
        return values.pop()

    def set_step(self, step: int) -> float:
        """Every SLA layer at the topk of `step` optimizer steps (config.topk_at); returns it."""
        topk = self.config.topk_at(step)
        for sla in self.layers.values():
            sla.set_topk(topk)
        return topk

    def dense(self) -> contextlib.AbstractContextManager[None]:
        """A block in which this thread's calls of every injected layer are torch's dense SDPA
        (SLA bypassed, its weights unused, nothing counted): the model as before injection."""
        return dense_attention()

    def fallback_counts(self) -> dict[str, dict[str, int]]:
        """Dense calls per layer path and reason (only layers and reasons that occurred)."""
        return {p: dict(r.fallbacks) for p, r in self.injected.items() if r.fallbacks}

    def total_fallbacks(self) -> int:
        """All dense calls of wrapped layers, every reason together."""
        return sum(sum(r.fallbacks.values()) for r in self.injected.values())

    def sla_calls(self) -> int:
        """Attention calls computed by SLA since injection (or the last reset_counts).

        Counters count calls as they happen: under activation checkpointing the recomputed
        forward counts again."""
        return sum(r.sla_calls for r in self.injected.values())

    def reset_counts(self) -> None:
        """Zero the SLA-call and fallback counters (not the once-per-reason log memory)."""
        for r in self.injected.values():
            r.fallbacks.clear()
            r.sla_calls = 0

    def layer_dtypes(self) -> dict[str, torch.dtype]:
        """Attention compute dtype per SLA layer: q/k/v dtype of its latest SLA call, or, before
        any call, the dtype of the attention module's own floating-point parameters."""
        return {
            path: r.last_dtype or _own_param_dtype(self._attention[path])
            for path, r in self.injected.items()
            if r.sla is not None
        }

    def remove(self) -> None:
        """Restore the model exactly: processors, hooks, and no ``sla`` submodules left."""
        if self.removed:
            return
        self.removed = True
        errors = []
        for undo in reversed(self._undo):
            try:
                undo()
            except RuntimeError as exc:  # keep restoring the other layers, then report
                errors.append(str(exc))
        self._undo.clear()
        model = self._model()
        if model is not None and _handles.get(model) is self:
            del _handles[model]
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> SLAHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"{len(self.layers)} SLA layers"
        return f"SLAHandle({state}, config={self.config})"


def apply_sla(
    model: nn.Module,
    config: SLAConfig,
    *,
    targets: Targets = None,
    head_dim: HeadDim = None,
) -> SLAHandle:
    """Give every selected self-attention layer of ``model`` its own SparseLinearAttention.

    config: an SLAConfig, passed to every layer's module as it is (SLAConfig.parse or from_dict
    build one from a dict or string). targets: module paths, module classes, or a predicate
    (path, module) -> bool; None picks diffusers self-attention modules, else the innermost
    modules whose class name contains "Attention". head_dim: for plain modules whose head dim
    cannot be read from their attributes (an int, or (path, module) -> int).
    The SLA modules are created on the device of each layer's parameters, proj_l in float32.
    """
    cfg = require_config(config)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        # DDP fixed its parameter list when it was built: new SLA weights would not be synced
        raise ValueError("apply_sla needs the model before DistributedDataParallel wraps it")
    if unwrap_model(model) in _handles:
        raise ValueError(
            f"{type(model).__name__} already has SLA injected; remove() that handle first"
        )
    model = unwrap_model(model)
    modules = dict(model.named_modules())
    selected = _select(model, modules, targets)
    if not selected:
        raise ValueError(
            f"apply_sla found no attention layers in {type(model).__name__} (targets={targets!r}); "
            "pass targets= module paths, classes or a predicate"
        )
    handle = SLAHandle(model, cfg)
    try:
        for path in selected:
            _inject_layer(handle, path, modules[path], cfg, head_dim)
        for path, module in modules.items():  # diffusers cross-attention: dense, but counted
            if path not in handle.injected and is_diffusers_attention(module) and _is_cross(module):
                _wrap_dense_layer(handle, path, module)
    except BaseException:
        handle.remove()
        raise
    _handles[model] = handle
    return handle


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DataParallel/DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def get_handle(model_or_handle: nn.Module | SLAHandle) -> SLAHandle:
    """The live SLAHandle of a model (unwrapping DDP/compile), or the handle itself."""
    if isinstance(model_or_handle, SLAHandle):
        handle = model_or_handle
    else:
        handle = _handles.get(unwrap_model(model_or_handle))
        if handle is None:
            raise ValueError(
                f"{type(model_or_handle).__name__} has no SLA injected; call apply_sla(model, config) first"
            )
    if handle.removed:
        raise ValueError("this SLAHandle was removed; its model no longer has SLA layers")
    return handle


def _select(model: nn.Module, modules: dict[str, nn.Module], targets: Targets) -> list[str]:
    if targets is None:
        found = [p for p, m in modules.items() if is_diffusers_attention(m) and not _is_cross(m)]
        if found:
            return found
        named = {p for p, m in modules.items() if "Attention" in type(m).__name__ and p}
        # innermost only: a wrapper "Attention" around another one would never call SDPA itself
        return [p for p in named if not any(q.startswith(p + ".") for q in named)]
    if isinstance(targets, type) or (
        isinstance(targets, tuple) and targets and all(isinstance(t, type) for t in targets)
    ):
        return [p for p, m in modules.items() if isinstance(m, targets) and p]
    if callable(targets):
        return [p for p, m in modules.items() if p and targets(p, m)]
    if isinstance(targets, str):
        raise ValueError(f"targets ({targets!r}) must be a list of module paths, not one string")
    paths = list(targets)
    for p in paths:
        if not isinstance(p, str) or p not in modules or not p:
            raise ValueError(
                f"target {p!r} is not a submodule path of {type(model).__name__} "
                "(paths look like 'blocks.0.attn1')"
            )
    return paths


def _is_cross(module: nn.Module) -> bool:
    return bool(getattr(module, "is_cross_attention", False))


def _inject_layer(
    handle: SLAHandle, path: str, module: nn.Module, cfg: SLAConfig, head_dim: HeadDim
) -> None:
    if hasattr(module, SLA_ATTR):
        raise ValueError(
            f"layer {path!r} already has an attribute {SLA_ATTR!r}; SLA is injected once per layer"
        )
    if is_diffusers_attention(module) and _is_cross(module):
        raise ValueError(f"layer {path!r} is cross-attention; SLA replaces self-attention only")
    d = _head_dim(path, module, head_dim)
    sla = SparseLinearAttention(d, cfg)
    param = next(iter(module.parameters()), None)
    if param is not None:
        sla.to(param.device)
    layer = InjectedLayer(path, sla, logged=handle._logged)
    module.add_module(SLA_ATTR, sla)
    handle._undo.append(lambda: _delete_submodule(module, path))
    handle.injected[path] = layer
    handle._attention[path] = module
    if is_diffusers_attention(module):
        original = install_processor(module, layer)
        handle._undo.append(lambda: restore_processor(module, original, path))
    else:
        _add_scope_hooks(handle, module, layer)


def _wrap_dense_layer(handle: SLAHandle, path: str, module: nn.Module) -> None:
    layer = InjectedLayer(path, None, logged=handle._logged)
    original = install_processor(module, layer)
    handle.injected[path] = layer
    handle._undo.append(lambda: restore_processor(module, original, path))


def _add_scope_hooks(handle: SLAHandle, module: nn.Module, layer: InjectedLayer) -> None:
    # per thread, a stack: the same module may run in several threads, and re-entrantly
    local = threading.local()

    def enter(module: nn.Module, _args: Any) -> None:
        if module._modules.get(SLA_ATTR) is not layer.sla:
            # a deep copy shares these hook functions, which would redirect to the original's SLA
            raise RuntimeError(
                f"layer {layer.path!r}: its {SLA_ATTR!r} module is not the one apply_sla "
                "registered (a copy of an SLA model?); copy before apply_sla or after remove()"
            )
        scope = layer_scope(layer)
        scope.__enter__()
        local.__dict__.setdefault("scopes", []).append(scope)

    def leave(_module: nn.Module, _args: Any, output: Any) -> None:
        # always_call=True: runs when forward raised too, so the scope always closes; the stack
        # is empty when a pre-hook raised before ours opened a scope
        scopes = local.__dict__.get("scopes")
        if scopes:
            scopes.pop().__exit__(None, None, None)

    pre = module.register_forward_pre_hook(enter)
    post = module.register_forward_hook(leave, always_call=True)
    handle._undo.append(post.remove)
    handle._undo.append(pre.remove)


def _delete_submodule(module: nn.Module, path: str) -> None:
    if module._modules.get(SLA_ATTR) is None:
        raise RuntimeError(
            f"layer {path!r}: the {SLA_ATTR!r} submodule was removed by someone else"
        )
    delattr(module, SLA_ATTR)


def _head_dim(path: str, module: nn.Module, head_dim: HeadDim) -> int:
    if head_dim is not None:
        d = head_dim(path, module) if callable(head_dim) else head_dim
    elif is_diffusers_attention(module):
        d = diffusers_head_dim(module)
    else:
        d = _plain_head_dim(module)
    if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
        raise ValueError(
            f"head dim of layer {path!r} ({type(module).__name__}) is {d!r}; pass head_dim= "
            "(an int or a function (path, module) -> int)"
        )
    return d


def _plain_head_dim(module: nn.Module) -> int | None:
    for name in _HEAD_DIM_ATTRS:
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    width = next(
        (getattr(module, n) for n in _WIDTH_ATTRS if isinstance(getattr(module, n, None), int)),
        None,
    )
    heads = next(
        (getattr(module, n) for n in _HEADS_ATTRS if isinstance(getattr(module, n, None), int)),
        None,
    )
    if width and heads and width % heads == 0:
        return width // heads
    return None


def _own_param_dtype(module: nn.Module) -> torch.dtype:
    for name, p in module.named_parameters():
        if not name.startswith(SLA_ATTR + ".") and p.is_floating_point():
            return p.dtype
    return torch.float32
