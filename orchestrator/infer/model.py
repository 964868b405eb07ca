"""Rebuild a trained model for inference: from a checkpoint directory or from an export.

Checkpoint (what a trial writes): build the architecture named in trial.json (a preset, or the
local base model directory, or a pipeline's transformer/), inject SLA with the trial's saved
settings, load the model weights (orchestrator.recipe.checkpoint_weights: the accelerate state's
model.safetensors or pytorch_model.bin, or a sharded trial's sharded/ joined into whole tensors)
and replay sla_attention.pt. A frozen base's (lean) checkpoint instead
rebuilds its base, checks its fingerprint against trial.json's and loads the trial's adapter
(LoRA) before SLA goes in. Export (what `sla-sweep export` writes):
sla_kernel_glue.load_exported. A pipeline trial's transformer is rebuilt here too
(`rebuild_checkpoint_model`); orchestrator.infer.pipeline_videos generates from it through
WanPipeline.

`attention="dense"` loads the same weights and then takes SLA out again; for SLA-trained weights
the caller must warn that quality will drop.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from orchestrator.data.folder import clip_shape
from orchestrator.infer.errors import InferenceError
from orchestrator.infer.export_info import INFERENCE_FILE
from orchestrator.infer.samples import GenerationSettings
from orchestrator.models.experts import sla_targets
from orchestrator.models.wan_presets import PRESETS, build_preset, load_local
from orchestrator.recipe.base_model import load_base_model
from orchestrator.recipe.checkpoint import LEAN, SLA_FILE, read_trial
from orchestrator.recipe.checkpoint_weights import model_state
from orchestrator.recipe.config import TrainConfig
from orchestrator.recipe.lora import (
    LORA_FILE,
    add_lora,
    base_identity,
    check_base,
    load_exported_lora,
    load_lora,
)
from sla_kernel_glue import SLAConfig, SLAHandle, apply_sla, load_exported, load_sla_state

Attention = Literal["sla", "dense"]


@dataclasses.dataclass
class LoadedModel:
    """A model ready to sample from, and what the caller must know about it."""

    model: nn.Module
    handle: SLAHandle | None  # None when running dense
    sla: SLAConfig | None  # the trial's SLA settings (None: full-attention control)
    settings: GenerationSettings | None  # the class-conditioned sampler's (None: a pipeline trial)
    source: dict[str, Any]  # provenance: checkpoint, step, base model, metrics
    train: TrainConfig | None = None  # a checkpoint's training config (None: an export)


def generation_settings(train: TrainConfig, model: nn.Module) -> GenerationSettings:
    """The clip shape, prompt shape and sampler settings of a trial, as the recipe used them."""
    cfg = model.config
    if train.is_pipeline:
        raise InferenceError(
            f"model {train.model!r} is a pipeline: its trials generate videos from prompts "
            "through WanPipeline (sla-sweep infer TARGET --prompt ...), not class-conditioned clips"
        )
    if train.data.source == "digits":
        frames, size = train.clip_shape
        num_classes = 10
    else:
        frames, size, _ = clip_shape(train.data.source, channels=int(cfg.in_channels))
        num_classes = 1
    return GenerationSettings(
        channels=int(cfg.in_channels),
        frames=int(frames),
        size=int(size),
        text_len=train.text_len,
        text_dim=int(cfg.text_dim),
        num_classes=num_classes,
        sample_steps=train.sample_steps,
        timestep_shift=train.flow_shift,
        mixed_precision=train.mixed_precision,
    )


def running_config(sla: SLAConfig, device: torch.device) -> SLAConfig:
    """The trial's SLA settings, with backend "triton" turned into "auto" off CUDA (said aloud)."""
    if sla.backend == "triton" and device.type != "cuda":
        print(
            f"note: the trial used SLA backend 'triton'; on {device.type} the PyTorch reference runs it (backend 'auto')"
        )
        return sla.replace(backend="auto")
    return sla


def load_checkpoint_model(
    directory: Path, *, attention: Attention, device: torch.device
) -> LoadedModel:
    """Rebuild the model of a checkpoint directory and its sampler settings; see the module
    docstring. A pipeline trial is refused (InferenceError): see rebuild_checkpoint_model."""
    loaded = rebuild_checkpoint_model(directory, attention=attention, device=device)
    return dataclasses.replace(loaded, settings=generation_settings(loaded.train, loaded.model))


def rebuild_checkpoint_model(
    directory: Path, *, attention: Attention, device: torch.device
) -> LoadedModel:
    """The model of a checkpoint directory with SLA on (or dense), its training config in
    `train` and no sampler settings (a pipeline trial's transformer, or a preset's model)."""
    directory = Path(directory)
    try:
        trial = read_trial(directory)
        train = TrainConfig.from_dict(trial["train"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InferenceError(f"{directory}: not a usable checkpoint directory ({exc})") from None
    sla = None if trial.get("sla") is None else SLAConfig.from_dict(trial["sla"])
    has_sla_file = (directory / SLA_FILE).is_file()
    if attention == "sla" and not has_sla_file:
        what = (
            "a full-attention control checkpoint"
            if sla is None
            else "its SLA layers' weights are missing"
        )
        raise InferenceError(
            f"{directory} has no {SLA_FILE} ({what}): pick an SLA trial's checkpoint, "
            "or pass --attention dense to run these weights without SLA"
        )
    lean = trial.get("checkpoint") == LEAN
    if lean:  # the base rebuilt and checked, the adapter on it
        model = _lean_model(directory, trial, train)
    else:
        model = (
            build_preset(train.model, seed=train.data_seed)
            if train.model in PRESETS
            else load_local(train.model)
        )
    handle = None
    if sla is not None:  # the layers the trial gave SLA (a two-expert trial's: its experts')
        targets = sla_targets(model, train.experts)
        handle = apply_sla(model, running_config(sla, device), targets=targets)
    state = {} if lean else _accelerate_model_state(directory)
    missing, unexpected = ([], []) if lean else model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InferenceError(
            f"{directory}: the saved model weights do not fit the rebuilt {train.model!r} model "
            f"(missing {_few(missing)}, unexpected {_few(unexpected)})"
        )
    if handle is not None and has_sla_file:
        load_sla_state(handle, directory)
    if attention == "dense" and handle is not None:
        handle.remove()
        handle = None
    source = {
        "kind": "checkpoint", "checkpoint": str(directory.resolve()), "step": trial["step"],
        "base_model": trial.get("base_model"), "model": train.model, "metrics": trial.get("metrics", {}),
    }  # fmt: skip
    return LoadedModel(model.to(device), handle, sla, None, source, train)


def _lean_model(directory: Path, trial: dict[str, Any], train: TrainConfig) -> nn.Module:
    """A frozen base's checkpoint: its base (a preset's rebuilt from the cache or by the same
    pre-training, a local or pipeline one loaded from its path), refused when its fingerprint
    differs from trial.json's, with the trial's adapter loaded (LoRA)."""
    saved = trial.get("base") or {}
    precision = saved.get("mixed_precision", "no")
    model, base_id = load_base_model(train, device=torch.device("cpu"), mixed_precision=precision)
    check_base(saved, base_identity(train, base_id, model, mixed_precision=precision), directory)
    if train.lora is not None:
        add_lora(model, train.lora)
        load_lora(model, directory / LORA_FILE, rank=train.lora.rank)
    return model


def load_export_model(
    directory: Path, *, attention: Attention, device: torch.device
) -> LoadedModel:
    """Rebuild the model of an `sla-sweep export` directory (base model + sla_attention.pt)."""
    directory = Path(directory)
    info = json.loads((directory / INFERENCE_FILE).read_text())
    try:
        settings = GenerationSettings.from_dict(info["generation"])
        sla = SLAConfig.from_dict(info["sla"])
    except (KeyError, ValueError, TypeError) as exc:
        raise InferenceError(
            f"{directory / INFERENCE_FILE}: not a valid export description ({exc})"
        ) from None
    backend = running_config(sla, device).backend
    model, handle = load_exported(directory, WanTransformer3DModel, backend=backend)
    load_exported_lora(model, directory)  # an unmerged LoRA export's adapter
    if attention == "dense":
        handle.remove()
        handle = None
    source = {**info.get("source", {}), "kind": "export", "export": str(directory.resolve())}
    return LoadedModel(model.to(device), handle, sla, settings, source)


def _accelerate_model_state(directory: Path) -> dict[str, torch.Tensor]:
    """The model's weights of a checkpoint: whole (a ddp trial's) or joined from sharded/ (fsdp)."""
    try:
        return model_state(directory)
    except ValueError as exc:  # CheckpointWeightsError, an unreadable index or shard
        raise InferenceError(str(exc)) from None


def _few(keys: list[str], limit: int = 3) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
