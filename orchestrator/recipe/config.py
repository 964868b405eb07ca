"""TrainConfig and DataConfig: one trial's knobs, frozen and validated once, every error at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from orchestrator.models.wan_presets import PRESETS, model_source_error, text_len
from orchestrator.values import is_non_negative_int, is_num, is_positive_int

LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # "no": float32, no autocast
TIMESTEP_SAMPLING = ("logit_normal", "uniform")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where clips come from and their shape.

    source: "digits" (moving handwritten digits, built in) or a folder of the user's clips.
    frames, size: clip F and H = W for "digits"; None takes the model preset's (required for a
        local model directory). A folder's clips bring their own shape.
    num_train: digits clips in the training set (a folder uses all but the held-out ones).
    num_val: held-out clips of the fixed validation batch.
    """

    source: str = "digits"
    frames: int | None = None
    size: int | None = None
    num_train: int = 1024
    num_val: int = 8

    def errors(self) -> list[str]:
        out = []
        if not isinstance(self.source, str) or not self.source:
            out.append(f"data.source ({self.source!r}) must be 'digits' or a folder path")
        elif self.source != "digits" and not Path(self.source).expanduser().is_dir():
            out.append(
                f"data.source ({self.source!r}) must be 'digits' or an existing folder of clips"
            )
        for key in ("frames", "size"):
            value = getattr(self, key)
            if value is not None and not is_positive_int(value):
                out.append(
                    f"data.{key} ({value!r}) must be a positive integer or null (the preset's)"
                )
        if is_positive_int(self.size) and self.size % 2:
            out.append(f"data.size ({self.size}) must be even (the model patches 2x2 pixels)")
        for key in ("num_train", "num_val"):
            if not is_positive_int(getattr(self, key)):
                out.append(f"data.{key} ({getattr(self, key)!r}) must be a positive integer")
        return out


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One trial's training knobs (the SLA settings travel separately, as an SLAConfig).

    model: a preset (tiny, small, medium, wan-1.3b, wan-1.3b-6l) or a local diffusers WanTransformer3DModel
        directory (used as the base model as is).
    steps: optimizer steps; batch_size: clips per process per micro-batch; grad_accum:
        micro-batches per optimizer step.
    lr, warmup_steps (linear from 0), lr_schedule ("constant" or "cosine" to 0 after warmup),
        weight_decay (AdamW), max_grad_norm (0 disables clipping).
    train_base: fine-tune the base weights too (the paper does); False trains only SLA's proj_l.
    mixed_precision: "auto" is bf16 on CUDA and "no" on CPU.
    timestep_sampling, timestep_shift: flow-matching t ~ logit-normal or uniform, then shifted.
    log_every: progress line and train metrics every N steps; eval_every: full evaluation every
        N steps (0: at the start and the end only); checkpoint_every: a checkpoint every N steps
        (0: at the end only); keep_checkpoints: how many of the newest local checkpoint
        directories to keep once the callback has returned (0: all; a Ray worker's report has
        already copied them to storage).
    sample_steps: Euler steps of the flow ODE for val/sample_psnr.
    base_steps, base_lr: full-attention pre-training of a preset's base model (cached by config);
        base_cache_dir: where (None: $SLA_SWEEP_CACHE or ~/.cache/sla-sweep).
    gradient_checkpointing: recompute block activations in backward (long sequences on a GPU).
    compile: torch.compile each transformer block after SLA injection (dense and SLA alike; only
        SLA's attention call stays eager). Costs compile time once per trial; pays off on long runs.
    """

    model: str = "tiny"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    steps: int = 30
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_steps: int = 5
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    train_base: bool = True
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 0
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    timestep_shift: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 0
    sample_steps: int = 8
    base_steps: int = 200
    base_lr: float = 1e-3
    base_cache_dir: str | None = None
    gradient_checkpointing: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):  # from_dict / YAML: a nested mapping
            object.__setattr__(self, "data", DataConfig(**self.data))
        errors = _errors(self)
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a (possibly nested) mapping; unknown keys are refused with the allowed ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        data_known = {f.name for f in dataclasses.fields(DataConfig)}
        errors = [
            f"unknown train key {k!r}; allowed: {', '.join(sorted(known))}"
            for k in values
            if k not in known
        ]
        data = values.get("data", {})
        if not isinstance(data, Mapping):
            errors.append(f"data ({data!r}) must be a mapping of {', '.join(sorted(data_known))}")
            data = {}
        errors += [
            f"unknown data key {k!r}; allowed: {', '.join(sorted(data_known))}"
            for k in data
            if k not in data_known
        ]
        kwargs = {k: v for k, v in values.items() if k in known and k != "data"}
        data_kwargs = {k: v for k, v in data.items() if k in data_known}
        try:
            config = cls(data=DataConfig(**data_kwargs), **kwargs)
        except ValueError as exc:
            errors.append(str(exc))
            config = None
        if errors:
            raise ValueError("; ".join(errors))
        assert config is not None
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def clip_shape(self) -> tuple[int, int]:
        """(frames, size) of the digits clips: data.frames/size, else the preset's; 0 where neither
        says (a folder's clips bring their own shape)."""
        preset = PRESETS.get(self.model)
        frames = self.data.frames or (preset.frames if preset else 0)
        size = self.data.size or (preset.size if preset else 0)
        return frames, size

    @property
    def text_len(self) -> int:
        """L of the text context the recipe feeds the model."""
        return text_len(self.model)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def resolve_mixed_precision(setting: str, *, cuda: bool) -> str:
    """The precision a run uses: "auto" is bf16 on CUDA and "no" elsewhere; others as given."""
    if setting == "auto":
        return "bf16" if cuda else "no"
    return setting


def autocast_dtype(precision: str):
    """torch dtype of a resolved precision's autocast; None for "no" (float32, no autocast)."""
    import torch

    name = AUTOCAST_DTYPES.get(precision)
    return None if name is None else getattr(torch, name)


def _errors(c: TrainConfig) -> list[str]:
    errors = []
    if not isinstance(c.model, str):
        errors.append(f"model ({c.model!r}) must be a preset name ({', '.join(PRESETS)}) or a path")
    else:
        reason = model_source_error(c.model)
        if reason:
            errors.append(reason)
        elif (
            c.model not in PRESETS
            and c.data.source == "digits"
            and (c.data.frames is None or c.data.size is None)
        ):
            errors.append(
                f"data.frames and data.size must be given for a local model directory ({c.model!r})"
            )
    if isinstance(c.data, DataConfig):
        errors += c.data.errors()
    else:
        errors.append(f"data ({c.data!r}) must be a DataConfig or a mapping")
    for key in ("steps", "batch_size", "grad_accum", "log_every", "sample_steps"):
        if not is_positive_int(getattr(c, key)):
            errors.append(f"{key} ({getattr(c, key)!r}) must be a positive integer")
    for key in (
        "warmup_steps",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "base_steps",
        "seed",
    ):
        if not is_non_negative_int(getattr(c, key)):
            errors.append(f"{key} ({getattr(c, key)!r}) must be a non-negative integer")
    for key in ("lr", "base_lr", "timestep_shift"):
        if not is_num(getattr(c, key)) or getattr(c, key) <= 0:
            errors.append(f"{key} ({getattr(c, key)!r}) must be a positive number")
    for key in ("weight_decay", "max_grad_norm"):
        if not is_num(getattr(c, key)) or getattr(c, key) < 0:
            errors.append(f"{key} ({getattr(c, key)!r}) must be a number >= 0")
    for key, allowed in (
        ("lr_schedule", LR_SCHEDULES),
        ("mixed_precision", MIXED_PRECISION),
        ("timestep_sampling", TIMESTEP_SAMPLING),
    ):
        if getattr(c, key) not in allowed:
            errors.append(f"{key} ({getattr(c, key)!r}) must be one of {', '.join(allowed)}")
    for key in ("train_base", "gradient_checkpointing", "compile"):
        if not isinstance(getattr(c, key), bool):
            errors.append(f"{key} ({getattr(c, key)!r}) must be true or false")
    if c.base_cache_dir is not None and not isinstance(c.base_cache_dir, str):
        errors.append(f"base_cache_dir ({c.base_cache_dir!r}) must be a path string or null")
    return errors
