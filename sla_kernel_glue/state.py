"""Read and write sla_attention.pt: the SLA weights that travel with every checkpoint.

Version 3 (written here):

    {"format": "sla_attention", "version": 3,
     "settings": SLAConfig.to_dict(),
     "topk": 0.1,
     "layers": {"<module path>": {"head_dim": 128, "dtype": "bf16",
                                 "state": {"proj_l.weight": (d, d), "proj_l.bias": (d,)}}}}

"topk" is the value the layers ran at when the file was written: with a topk schedule
(settings["topk_schedule"]), the step's, which is not settings["topk"] (the schedule's end, what
a loader runs at) before the schedule ends. Files without it are read as well.

A layer's "state" holds proj_l and, in version 3, the learned parts its settings call for:
"router_q.weight" and "router_k.weight" (d, d) with router "learned", "alpha" (d,) with mix
"alpha" (learned_router.py), no more and no fewer. A config that needs learned parts refuses a
file without them (version 1 and 2 files never hold them). Version 2 is version 3 without them.

Version 1 (read only): {"version": 1, "settings": {...}, "state": {"<head_dim>:<dtype>":
{"proj_l.weight", "proj_l.bias"}}}; an entry applies to every layer of that head dim. When a
head dim has entries for several dtypes, the one matching the layer's dtype is used.

A layer's "dtype" is its attention compute dtype: the dtype of q/k/v in the layer's latest SLA
call, or, before any call, the dtype of the attention module's own parameters (so a bf16 model,
or an fp32 model trained under bf16 autocast, writes "bf16" once it has run). It is recorded for
the reader; proj_l itself is float32 whatever the dtype. "backend" is not compared between the
file and the running config: it picks a kernel, not the math, so a GPU (triton) checkpoint loads
for CPU (torch) inference.

Files are loaded with torch.load(weights_only=True) and validated; anything else is refused with
one SLAStateError line that names the file. Writes are atomic (temp file, then os.replace).
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import OMITTED_DEFAULTS, SLAConfig
from .injection import SLAHandle, get_handle

log = logging.getLogger(__name__)

FILENAME = "sla_attention.pt"
FORMAT = "sla_attention"
VERSION = 3
VERSIONS = (1, 2, 3)
STATE_KEYS = ("proj_l.weight", "proj_l.bias")
ROUTER_KEYS = ("router_q.weight", "router_k.weight")  # router "learned"
ALPHA_KEYS = ("alpha",)  # mix "alpha"
DTYPE_NAMES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.float64: "fp64",
}
# settings keys that do not change the math, so a difference is not a mismatch
_NOT_COMPARED = ("backend",)


class SLAStateError(ValueError):
    """sla_attention.pt is unreadable, not in the expected form, or does not fit the model."""


def save_sla_state(
    model_or_handle: nn.Module | SLAHandle,
    directory: str | os.PathLike,
    *,
    states: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Path:
    """Write ``directory/sla_attention.pt`` (version 3) atomically; returns its path.

    states: {layer path: {name: tensor}} to write instead of the layers' own state_dict (a
    sharded model's proj_l, gathered whole by the caller)."""
    handle = get_handle(model_or_handle)
    dtypes = handle.layer_dtypes()
    layers = {}
    for path, sla in handle.layers.items():
        state = sla.state_dict() if states is None else states[path]
        layers[path] = {
            "head_dim": sla.head_dim,
            "dtype": DTYPE_NAMES.get(dtypes[path], str(dtypes[path]).removeprefix("torch.")),
            "state": {k: v.detach().to("cpu", copy=True) for k, v in state.items()},
        }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "settings": handle.config.to_dict(),
        "topk": handle.topk,
        "layers": layers,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FILENAME
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{FILENAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_sla_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate one sla_attention.pt (version 1, 2 or 3); tensors on the CPU."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SLAStateError(
            f"{path}: refused, it holds more than tensors and plain values "
            f"(weights_only load: {_first_line(exc)})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise SLAStateError(
            f"{path}: not a readable torch file, truncated or corrupt ({_first_line(exc)})"
        ) from None
    _validate(path, data)
    return data


def load_sla_state(
    model_or_handle: nn.Module | SLAHandle,
    directory: str | os.PathLike,
    *,
    allow_settings_mismatch: bool = False,
) -> bool:
    """Copy the proj_l weights in ``directory/sla_attention.pt`` into the model's SLA layers.

    Returns False (and logs one line) when the file is missing: the SLA layers start fresh.
    Every layer must be covered and every shape must fit, or nothing is loaded (SLAStateError).
    Settings that differ from the running config raise unless ``allow_settings_mismatch``.
    """
    handle = get_handle(model_or_handle)
    path = Path(directory) / FILENAME
    if not path.is_file():
        log.warning("no %s in %s: SLA layers start fresh", FILENAME, directory)
        return False
    data = read_sla_state(path)
    _check_settings(path, data["settings"], handle.config, allow_settings_mismatch)
    _check_learned(path, SLAConfig.from_dict(data["settings"]), handle.config)
    if data["version"] == 1:
        tensors = _v1_tensors(path, data, handle)
    else:
        tensors = _v2_tensors(path, data, handle)
    wanted = set(STATE_KEYS) | set(learned_keys(handle.config))
    # learned parts the running config has no place for (settings mismatch allowed) stay unread
    tensors = {p: {k: v for k, v in st.items() if k in wanted} for p, st in tensors.items()}
    layers = handle.layers
    for layer_path, state in tensors.items():  # check every shape before changing anything
        for key, value in state.items():
            param = layers[layer_path].get_parameter(key)
            if value.shape != param.shape:
                raise SLAStateError(
                    f"{path}: layer {layer_path!r} {key} has shape {tuple(value.shape)}, "
                    f"the model's is {tuple(param.shape)}"
                )
    with torch.no_grad():
        for layer_path, state in tensors.items():
            for key, value in state.items():
                layers[layer_path].get_parameter(key).copy_(value)
    return True


def _v2_tensors(path: Path, data: dict, handle: SLAHandle) -> dict[str, dict[str, torch.Tensor]]:
    layers, saved = handle.layers, data["layers"]
    missing = sorted(set(layers) - set(saved))
    extra = sorted(set(saved) - set(layers))
    if missing or extra:
        raise SLAStateError(
            f"{path}: layers do not match the model: missing {_few(missing)}, "
            f"not in the model {_few(extra)}"
        )
    for layer_path, entry in saved.items():
        if entry["head_dim"] != layers[layer_path].head_dim:
            raise SLAStateError(
                f"{path}: layer {layer_path!r} has head_dim {entry['head_dim']}, "
                f"the model's is {layers[layer_path].head_dim}"
            )
    return {p: saved[p]["state"] for p in layers}


def _v1_tensors(path: Path, data: dict, handle: SLAHandle) -> dict[str, dict[str, torch.Tensor]]:
    by_dim: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for key, state in data["state"].items():
        dim, dtype = key.split(":")
        by_dim.setdefault(int(dim), {})[dtype] = state
    dtypes = handle.layer_dtypes()
    out = {}
    for layer_path, sla in handle.layers.items():
        options = by_dim.get(sla.head_dim)
        if not options:
            raise SLAStateError(
                f"{path}: version 1 file has no entry for head_dim {sla.head_dim} "
                f"(layer {layer_path!r}); it has {', '.join(sorted(data['state']))}"
            )
        dtype = DTYPE_NAMES.get(dtypes[layer_path], str(dtypes[layer_path]))
        if len(options) == 1:
            out[layer_path] = next(iter(options.values()))
        elif dtype in options:
            out[layer_path] = options[dtype]
        else:
            raise SLAStateError(
                f"{path}: version 1 file has head_dim {sla.head_dim} for dtypes "
                f"{', '.join(sorted(options))} but layer {layer_path!r} computes in {dtype}"
            )
    return out


def learned_keys(config: SLAConfig) -> tuple[str, ...]:
    """The state keys of the learned parts a layer of this config holds besides proj_l."""
    return (ROUTER_KEYS if config.router == "learned" else ()) + (
        ALPHA_KEYS if config.mix == "alpha" else ()
    )


def _check_learned(path: Path, saved: SLAConfig, running: SLAConfig) -> None:
    """A config with learned parts refuses a file written without them (one line)."""
    missing = [
        f"{name} {getattr(running, name)!r}"
        for name in ("router", "mix")
        if getattr(running, name) != getattr(saved, name)
        and getattr(saved, name) in ("fixed", "add")
    ]
    if missing:
        raise SLAStateError(
            f"{path}: the running config has {' and '.join(missing)}, but the file holds no "
            f"learned {'/'.join(n.split()[0] for n in missing)} weights (written with "
            f"router {saved.router!r}, mix {saved.mix!r}); train with that setting first"
        )


def _check_settings(
    path: Path, settings: Mapping[str, Any], config: SLAConfig, allow: bool
) -> None:
    # to_dict leaves a missing schedule, router fixed and mix add out of the file
    running = {**OMITTED_DEFAULTS, **config.to_dict()}
    settings = {**OMITTED_DEFAULTS, **settings}
    differing = sorted(
        k for k, v in settings.items() if k not in _NOT_COMPARED and running.get(k) != v
    )
    if not differing:
        return
    detail = ", ".join(f"{k} (file {settings[k]!r}, running {running[k]!r})" for k in differing)
    if not allow:
        raise SLAStateError(
            f"{path}: SLA settings differ from the running config: {detail}; "
            "pass allow_settings_mismatch=True to load anyway"
        )
    log.warning("%s: loading despite differing SLA settings: %s", path, detail)


def _validate(path: Path, data: Any) -> None:
    def fail(why: str) -> SLAStateError:
        return SLAStateError(f"{path}: {why}")

    if not isinstance(data, dict):
        raise fail(f"top level is {type(data).__name__}, expected a dict")
    version = data.get("version")
    if "format" in data or version in VERSIONS[1:]:
        if data.get("format") != FORMAT:
            raise fail(f"format is {data.get('format')!r}, expected {FORMAT!r}")
    if version not in VERSIONS:
        raise fail(f"version is {version!r}, expected one of {', '.join(map(str, VERSIONS))}")
    settings = data.get("settings")
    if not isinstance(settings, dict):
        raise fail(f"settings is {type(settings).__name__}, expected a dict of SLA settings")
    try:
        config = SLAConfig.from_dict(settings)
    except ValueError as exc:
        raise fail(f"settings are invalid: {exc}") from None
    if version != VERSION and config.learned:
        raise fail(
            f"settings say router {config.router!r}, mix {config.mix!r}, but a version {version} "
            "file holds no learned parts"
        )
    if "topk" in data:  # the layers' topk when written (a schedule's step)
        try:
            SLAConfig(topk=data["topk"])
        except ValueError as exc:
            raise fail(str(exc)) from None
    if version == 1:
        entries = data.get("state")
        if not isinstance(entries, dict) or not entries:
            raise fail("version 1 'state' must be a non-empty dict keyed '<head_dim>:<dtype>'")
        for key, state in entries.items():
            dim, _, dtype = str(key).partition(":")
            if not (dim.isdigit() and int(dim) > 0 and dtype):
                raise fail(
                    f"version 1 state key {key!r} is not '<head_dim>:<dtype>', e.g. '128:bf16'"
                )
            _validate_tensors(fail, f"state[{key!r}]", state, int(dim), ())
        return
    layers = data.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise fail("'layers' must be a non-empty dict keyed by module path")
    for layer_path, entry in layers.items():
        if not isinstance(entry, dict) or set(entry) != {"head_dim", "dtype", "state"}:
            raise fail(f"layer {layer_path!r} must be a dict with keys head_dim, dtype, state")
        dim = entry["head_dim"]
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise fail(f"layer {layer_path!r} head_dim ({dim!r}) must be a positive integer")
        if not isinstance(entry["dtype"], str):
            raise fail(f"layer {layer_path!r} dtype ({entry['dtype']!r}) must be a string")
        extra = learned_keys(config) if version == 3 else ()
        _validate_tensors(fail, f"layer {layer_path!r}", entry["state"], dim, extra)


def _validate_tensors(fail, where: str, state: Any, head_dim: int, extra: tuple[str, ...]) -> None:
    """Exactly proj_l's tensors and the `extra` learned ones, each floating point, each in shape."""
    expected = (*STATE_KEYS, *extra)
    if not isinstance(state, dict) or set(state) != set(expected):
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise fail(f"{where} state must hold exactly {', '.join(expected)}, got {keys}")
    square, vector = (head_dim, head_dim), (head_dim,)
    shapes = {"proj_l.weight": square, "proj_l.bias": vector, "alpha": vector}
    shapes.update(dict.fromkeys(ROUTER_KEYS, square))
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise fail(f"{where} {key} must be a floating-point tensor")
        if tuple(value.shape) != shapes[key]:
            raise fail(
                f"{where} {key} has shape {tuple(value.shape)}, expected {shapes[key]} "
                f"for head_dim {head_dim}"
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _few(items: list[str], limit: int = 3) -> str:
    if not items:
        return "none"
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
