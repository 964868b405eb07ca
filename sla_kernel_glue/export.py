"""Export an SLA model as its base model's own files plus sla_attention.pt, and load it back.

    export_base_model(model, "out/")          # out/: the base model's usual files + sla_attention.pt
    model, handle = load_exported("out/", WanTransformer3DModel)

A diffusers ModelMixin is written with its own ``save_pretrained`` (config.json and safetensors),
so stock ``from_pretrained`` loads it and finds no SLA keys. A plain nn.Module is written as
``model.safetensors`` (safetensors' save_model); load it back with a factory that builds the
empty model. The SLA modules are taken off the model only while the base files are written and
put back (the same objects, so optimizers still hold them): do not run the model in another
thread during the export.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

from .config import SLAConfig
from .injection import SLA_ATTR, SLAHandle, apply_sla, get_handle
from .state import FILENAME, SLAStateError, load_sla_state, read_sla_state, save_sla_state

PLAIN_WEIGHTS = "model.safetensors"


def export_base_model(model_with_sla: nn.Module | SLAHandle, out_dir: str | os.PathLike) -> Path:
    """Write the base model without SLA tensors, and sla_attention.pt beside it; returns out_dir."""
    handle = get_handle(model_with_sla)
    model = handle.model
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _without_sla_modules(handle):
        if callable(getattr(model, "save_pretrained", None)):
            model.save_pretrained(out)
        else:
            save_model(model, str(out / PLAIN_WEIGHTS))
    save_sla_state(handle, out)
    return out


def load_exported(
    out_dir: str | os.PathLike,
    model_cls: type[nn.Module] | Callable[[], nn.Module],
    *,
    backend: str | None = None,
) -> tuple[nn.Module, SLAHandle]:
    """Build the base model from ``out_dir`` and put its SLA layers back; returns (model, handle).

    model_cls: a diffusers ModelMixin class (loaded with from_pretrained) or, for a plain model,
    a zero-argument factory returning the empty model (its weights come from model.safetensors).
    backend: run the SLA layers with another backend than the exported one ("torch" on a CPU).
    """
    out = Path(out_dir)
    sla_file = out / FILENAME
    if not sla_file.is_file():
        raise SLAStateError(
            f"no {FILENAME} in {out}: not an SLA export (export_base_model writes it)"
        )
    data = read_sla_state(sla_file)
    config = SLAConfig.from_dict(data["settings"])
    if backend is not None:
        config = config.replace(backend=backend)
    if callable(getattr(model_cls, "from_pretrained", None)):
        model = model_cls.from_pretrained(out)
    else:
        model = model_cls()
        load_model(model, str(out / PLAIN_WEIGHTS))
    if data["version"] == 1:  # no layer paths in the file: the default layer choice
        handle = apply_sla(model, config)
    else:
        layers = data["layers"]
        handle = apply_sla(
            model,
            config,
            targets=list(layers),
            head_dim=lambda path, _module: layers[path]["head_dim"],
        )
    try:
        load_sla_state(handle, out)
    except BaseException:
        handle.remove()
        raise
    return model, handle


@contextlib.contextmanager
def _without_sla_modules(handle: SLAHandle) -> Iterator[None]:
    model = handle.model
    taken = []
    try:
        for path, sla in handle.layers.items():
            parent = model.get_submodule(path)
            taken.append((parent, list(parent._modules), sla))
            del parent._modules[SLA_ATTR]
        yield
    finally:
        for parent, order, sla in taken:
            parent._modules[SLA_ATTR] = sla
            # keep the submodule order, so state_dict keys come out in the same order as before
            for name in order:
                parent._modules[name] = parent._modules.pop(name)
