"""A model folder's weight files checked against its config without reading the weights' data.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte range) and the data; only the first two are read. A file is complete when the
header parses, every range lies inside the data and the data is exactly as long as the header
says. A `.bin` file is a pickle: it is accepted only when torch loads it with `weights_only=True`
(memory-mapped, so its tensors are not read either); anything else is refused, never unpickled.

The names and shapes a diffusers model would load are those of the model built from its config on
the meta device (no memory). Before that is built, the config's size is estimated from its width
and depth (as orchestrator.spec.sizes does for the presets) and compared with what the weights
hold, so a config of tens of thousands of layers is refused in one line instead of being built.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.models.wan_presets import PRESETS

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on a header
# dtype -> bytes per element, as safetensors names them
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
STANDARD_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")  # diffusers', transformers'
CONFIG_SLACK = 2.0  # a config may describe at most this many times the parameters of its weights

Shapes = dict[str, tuple[int, ...]]
_MEMO: dict[tuple, tuple[Shapes, list[str]]] = {}  # folder files' (path, size, mtime) -> result


class WeightsError(ValueError):
    """A weight file that cannot be used (one line naming the file)."""


def safetensors_shapes(path: Path) -> Shapes:
    """Tensor name -> shape from a safetensors header; WeightsError unless the file is complete."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: {size} bytes, not a safetensors file (truncated?)")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise WeightsError(
                f"{path}: its header length ({length:,} bytes) exceeds the file ({size:,} bytes);"
                " not a safetensors file, or truncated"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: the safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: the safetensors header is not a JSON object")
    shapes: Shapes = {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            nbytes = DTYPE_BYTES[dtype] * math.prod(int(n) for n in shape)
            ok = 0 <= start <= stop and stop - start == nbytes
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise WeightsError(f"{path}: the header's entry for {name!r} is malformed ({entry!r})")
        shapes[name] = tuple(int(n) for n in shape)
        end = max(end, stop)
    data = size - 8 - length
    if data != end:
        raise WeightsError(
            f"{path}: truncated or padded: its header describes {end:,} bytes of tensor data, the"
            f" file holds {data:,} (copy the file again)"
        )
    return shapes


def bin_shapes(path: Path) -> Shapes:
    """Tensor name -> shape of a `.bin` state dict (see load_weights_only)."""
    state = load_weights_only(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors (sla-sweep loads safetensors)")
    return {str(k): tuple(v.shape) for k, v in state.items()}


def load_weights_only(path: Path) -> Any:
    """A torch `.bin` file loaded memory-mapped with weights_only=True (its tensors are not read);
    WeightsError (one line) for a pickle that needs more, or an unreadable file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path}: a pickle that holds more than tensors and plain values: only safetensors"
            " files, or .bin files that torch loads with weights_only=True, are accepted (a"
            " pickle's code never runs); convert the weights to safetensors"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: not a readable weights-only torch file ({first}): only safetensors files,"
            " or .bin files that torch loads with weights_only=True, are accepted"
        ) from None


def weight_files(folder: Path) -> list[Path]:
    """The files from_pretrained reads weights from: the shards a *.index.json names (safetensors
    first), else diffusers' or transformers' standard file (safetensors first), else every
    top-level *.safetensors, else every *.bin."""
    for pattern in ("*.safetensors.index.json", "*.index.json"):
        indexes = sorted(folder.glob(pattern))
        if indexes:
            shards: set[str] = set()
            for index in indexes:
                try:
                    shards |= set(json.loads(index.read_text())["weight_map"].values())
                except (OSError, ValueError, KeyError, TypeError, AttributeError):
                    continue  # pipeline.py reports an unreadable index
            return [folder / s for s in sorted(shards) if (folder / s).is_file()]
    for suffix in (".safetensors", ".bin"):
        standard = [folder / f"{stem}{suffix}" for stem in STANDARD_STEMS]
        if any(p.is_file() for p in standard):
            return [p for p in standard if p.is_file()]
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def folder_shapes(folder: Path) -> tuple[Shapes, list[str]]:
    """(name -> shape over every weight file, one problem line per unusable file); memoised
    while the files' sizes and modification times stay as they are."""
    files = weight_files(folder)
    key = tuple((str(p), *_stamp(p)) for p in files)
    if key in _MEMO:
        return _MEMO[key]
    shapes: Shapes = {}
    problems = []
    for path in files:
        try:
            read = bin_shapes if path.suffix == ".bin" else safetensors_shapes
            shapes.update(read(path))
        except WeightsError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"{path}: not readable ({exc})")
    _MEMO[key] = (shapes, problems)
    return shapes, problems


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def estimated_params(config: dict[str, Any]) -> int | None:
    """A WanTransformer3DModel config's parameters, estimated as orchestrator.spec.sizes does for
    the presets (None when its keys are not numbers)."""
    try:
        hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        layers, ffn = int(config["num_layers"]), int(config["ffn_dim"])
        text_dim = int(config.get("text_dim") or 0)
    except (KeyError, TypeError, ValueError):
        return None
    return layers * (8 * hidden * hidden + 2 * hidden * ffn) + 2 * text_dim * hidden


def block_count(shapes: Shapes) -> int:
    """How many transformer blocks (`blocks.N.`) the weights hold."""
    indices = {name.split(".")[1] for name in shapes if name.startswith("blocks.")}
    return len({i for i in indices if i.isdigit()})


def transformer_problems(config: dict[str, Any], shapes: Shapes, path: Path) -> list[str]:
    """A WanTransformer3DModel config (its defaults filled in) against its weights' shapes: the
    depth and size first, in one line, then every name and shape from_pretrained would load."""
    blocks = block_count(shapes)
    layers = config.get("num_layers")
    if isinstance(layers, int) and layers != blocks:
        return [
            f"{path}: num_layers is {layers:,} but the weights beside it hold {blocks} blocks"
            " (from_pretrained would initialise missing blocks randomly and drop extra ones):"
            " use the config the weights were saved with"
        ]
    described, held = estimated_params(config), sum(math.prod(s) for s in shapes.values())
    if described is not None and described > CONFIG_SLACK * max(held, 1):
        return [
            f"{path}: describes a model of about {described:,} parameters (estimated from its"
            f" width and depth) but the weights beside it hold {held:,}: use the config the"
            " weights were saved with"
        ]
    from diffusers import WanTransformer3DModel  # heavy: diffusers, only to build the model

    return _against_model(WanTransformer3DModel, config, shapes, path)


def diffusers_problems(cls: type, config: dict[str, Any], shapes: Shapes, path: Path) -> list[str]:
    """A diffusers model config against its weights: every name and shape from_pretrained loads."""
    return _against_model(cls, config, shapes, path)


def _against_model(cls: type, config: dict[str, Any], shapes: Shapes, path: Path) -> list[str]:
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception as exc:  # noqa: BLE001 - any constructor error is the config's problem
        return [f"{path}: {cls.__name__} cannot be built from this config ({exc})"]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    problems = []
    if missing:
        problems.append(
            f"{path}: the weights lack {len(missing)} tensors the config describes"
            f" ({_few(missing)}), which from_pretrained would initialise randomly"
        )
    if unexpected:
        problems.append(
            f"{path}: the weights hold {len(unexpected)} tensors the config does not describe"
            f" ({_few(unexpected)})"
        )
    if wrong:
        first = ", ".join(f"{k} {shapes[k]} (config: {expected[k]})" for k in wrong[:2])
        problems.append(
            f"{path}: {len(wrong)} tensors have other shapes than the config gives: {first}"
        )
    return problems


def text_encoder_problems(config: dict[str, Any], shapes: Shapes, path: Path) -> list[str]:
    """A UMT5EncoderModel config against its weights: every tensor the model loads is there with
    its shape (tied weights, such as shared.weight and encoder.embed_tokens.weight, count once:
    any one of their names). Extra tensors are not a problem (transformers drops them)."""
    # heavy: transformers, only to build the encoder's skeleton on the meta device
    from transformers import UMT5Config, UMT5EncoderModel

    try:
        with torch.device("meta"):
            model = UMT5EncoderModel(UMT5Config(**config))
    except Exception as exc:  # noqa: BLE001 - any constructor error is the config's problem
        return [f"{path}: UMT5EncoderModel cannot be built from this config ({exc})"]
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    missing, wrong = [], []
    for names in groups.values():
        held = [n for n in names if n in shapes]
        expected = tuple(model.get_parameter(names[0]).shape)
        if not held:
            missing.append(names[0])
        elif shapes[held[0]] != expected:
            wrong.append(f"{held[0]} {shapes[held[0]]} (config: {expected})")
    problems = []
    if missing:
        problems.append(
            f"{path}: the weights lack {len(missing)} tensors the config describes"
            f" ({_few(sorted(missing))}), which from_pretrained would initialise randomly"
        )
    if wrong:
        problems.append(
            f"{path}: {len(wrong)} tensors have other shapes than the config gives: "
            + ", ".join(sorted(wrong)[:2])
        )
    return problems


def _few(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def iter_linears(model: Any) -> Iterator[tuple[str, int, int]]:
    """(module path, in_features, out_features) of every nn.Linear of a model."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            yield name, module.in_features, module.out_features


_LINEARS: dict[tuple, dict[str, tuple[int, int]]] = {}


def model_linears(model: str) -> dict[str, tuple[int, int]]:
    """Module path -> (in_features, out_features) of every linear of `model` (a preset name, a
    pipeline or a transformer directory, already checked), built from its config on the meta
    device; memoised."""
    from diffusers import WanTransformer3DModel  # heavy: diffusers, only to build the model

    if model in PRESETS:
        key: tuple = (model,)
        config = PRESETS[model].transformer_config()
    else:
        root = Path(model).expanduser()
        path = root / "transformer" / "config.json"
        path = path if path.is_file() else root / "config.json"
        key = (str(path), *_stamp(path))
        if key in _LINEARS:
            return _LINEARS[key]
        config = json.loads(path.read_text())
    if key not in _LINEARS:
        with torch.device("meta"):
            built = WanTransformer3DModel.from_config(config)
        _LINEARS[key] = {name: (i, o) for name, i, o in iter_linears(built)}
    return _LINEARS[key]


def lora_problems(model: str, rank: Any, targets: tuple[str, ...]) -> list[str]:
    """LoRA targets that match no linear of `model` (peft's suffix match), each named; a rank
    above the smallest side of a linear it adapts."""
    linears = model_linears(model)
    problems, adapted = [], {}
    for target in targets:
        hits = {n: s for n, s in linears.items() if n == target or n.endswith("." + target)}
        if not hits:
            kinds = sorted({n.split(".", 2)[2] for n in linears if n.startswith("blocks.0.")})
            problems.append(
                f"lora.target_modules: {target!r} matches no linear layer of {model!r} (a block's"
                f" linears: {', '.join(kinds)})"
            )
        adapted.update(hits)
    if adapted and isinstance(rank, int) and rank > 0:
        name, (i, o) = min(adapted.items(), key=lambda kv: min(kv[1]))
        if rank > min(i, o):
            problems.append(
                f"lora.rank ({rank}) is larger than the layers it adapts: {name} is {i} -> {o},"
                f" so the rank can be at most {min(i, o)}"
            )
    return problems
