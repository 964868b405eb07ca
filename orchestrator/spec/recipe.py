"""The `model:`, `data:` and `train:` sections of an experiment YAML -> the recipe's TrainConfig.

TrainConfig (orchestrator/recipe/config.py) is the single source of truth: its fields are the
allowed keys and its own validation checks the values.

    model: tiny                      # a preset, {preset: tiny}, or {path: DIR}: a diffusers Wan
                                     # pipeline (model_index.json) or transformer directory
    data: {source: digits, frames: 4, size: 16, num_train: 256, num_val: 4}
    validation: {prompts: [...], seeds: [0], steps: 20, guidance_scale: 5.0, every: 0}
    train: {steps: 20, lr: 3e-4, ...}  # every other TrainConfig field

Relative paths (model path, data folder, cache directories) are made absolute against the
working directory: Ray runs trials and workers in other directories.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.models.wan_presets import PRESETS
from orchestrator.recipe import DataConfig, TrainConfig
from orchestrator.recipe.config import ValidationConfig

DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataConfig))
VALIDATION_KEYS = tuple(f.name for f in dataclasses.fields(ValidationConfig))
TRAIN_KEYS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("model", "data", "validation")
)


def train_kwargs(
    model: Any, data: Any, train: Any, errors: list[str], cwd: Path, validation: Any = None
) -> dict[str, Any]:
    """TrainConfig keywords (plain values, `data` and `validation` nested) from the sections;
    appends errors."""
    kwargs: dict[str, Any] = {}
    n_before = len(errors)
    source = _model_source(model, errors)
    if source is not None:
        is_path = source not in PRESETS
        kwargs["model"] = str((cwd / Path(source).expanduser()).resolve()) if is_path else source
    data = _section("data", data, DATA_KEYS, errors)
    if data is not None:
        src = data.get("source")
        if isinstance(src, str) and src != "digits":
            data["source"] = str((cwd / Path(src).expanduser()).resolve())
        if isinstance(data.get("cache_dir"), str):
            data["cache_dir"] = str((cwd / Path(data["cache_dir"]).expanduser()).resolve())
        kwargs["data"] = data
    validation = _section("validation", validation, VALIDATION_KEYS, errors)
    if validation is not None:
        kwargs["validation"] = validation
    train = _section("train", train, TRAIN_KEYS, errors)
    if train is not None:
        kwargs.update(train)
        cache = kwargs.get("base_cache_dir")
        if isinstance(cache, str):
            kwargs["base_cache_dir"] = str((cwd / Path(cache).expanduser()).resolve())
    if len(errors) == n_before:
        try:
            TrainConfig.from_dict(kwargs)
        except (TypeError, ValueError) as exc:
            errors.append(f"train: {str(exc).removeprefix('invalid training config: ')}")
    return kwargs


def _section(
    name: str, value: Any, keys: tuple[str, ...], errors: list[str]
) -> dict[str, Any] | None:
    """The known keys of one YAML section (None when absent); appends its problems to errors."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        errors.append(f"{name} must be a mapping of {', '.join(keys)}, got {value!r}")
        return None
    errors += [
        f"unknown key {name}.{k}; allowed: {', '.join(keys)}" for k in value if k not in keys
    ]
    return {k: v for k, v in value.items() if k in keys}


def build_train_config(kwargs: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of a validated spec (the plain keywords travel to Ray workers)."""
    return TrainConfig.from_dict(dict(kwargs))


def _model_source(model: Any, errors: list[str]) -> str | None:
    if model is None:
        return None
    if isinstance(model, str):
        return model
    if isinstance(model, Mapping) and len(model) == 1 and next(iter(model)) in ("preset", "path"):
        kind, value = next(iter(model.items()))
        if not isinstance(value, str) or not value:
            errors.append(f"model.{kind} ({value!r}) must be a string")
            return None
        if kind == "preset" and value not in PRESETS:
            errors.append(f"model.preset ({value!r}) must be one of {', '.join(PRESETS)}")
            return None
        return value
    errors.append(
        f"model ({model!r}) must be a preset name ({', '.join(PRESETS)}), {{preset: NAME}} or "
        "{path: /a/local/diffusers/model/dir}"
    )
    return None
