"""TrainConfig: one trial's knobs, frozen and validated once, every error at once.

Each field is declared once (config_fields.knob): its default, its check, what it is, whether a
sweep may search it and whether `python -m orchestrator.recipe` takes it as an option. The checks
that span several fields (the model against its data and LoRA) are at the end of this module.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal

from orchestrator.models.wan_presets import PRESETS, model_source_error, text_len

from .config_checks import objective_errors, parallel_errors, shape_errors
from .config_fields import (
    BOOL,
    NON_NEGATIVE_INT,
    NON_NEGATIVE_NUMBER,
    PATH_OR_NULL,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    field_errors,
    is_section,
    knob,
    one_of,
    or_null,
    section,
    sections,
)
from .config_sections import LORA_TARGETS, SHORT_CLIPS, DataConfig, LoraConfig, ValidationConfig

__all__ = [
    "AUTOCAST_DTYPES",
    "LORA_TARGETS",
    "LR_SCHEDULES",
    "MIXED_PRECISION",
    "EXPERTS",
    "OBJECTIVES",
    "PARALLEL",
    "SHORT_CLIPS",
    "TIMESTEP_SAMPLING",
    "DataConfig",
    "LoraConfig",
    "TrainConfig",
    "ValidationConfig",
    "autocast_dtype",
    "resolve_mixed_precision",
]

LrSchedule = Literal["constant", "cosine"]
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
TimestepSampling = Literal["logit_normal", "uniform"]
Parallel = Literal["ddp", "fsdp"]
Experts = Literal["both", "high_noise", "low_noise"]
Objective = Literal["flow_matching", "distill"]
LR_SCHEDULES = typing.get_args(LrSchedule)
MIXED_PRECISION = typing.get_args(MixedPrecision)
TIMESTEP_SAMPLING = typing.get_args(TimestepSampling)
PARALLEL = typing.get_args(Parallel)
EXPERTS = typing.get_args(Experts)
OBJECTIVES = typing.get_args(Objective)
# A checkpoint's folder of a step's validation videos and frame grids (pipelines); here, not in
# recipe.checkpoint (torch, accelerate, diffusers), so that the sweep's driver names it without them.
VALIDATION_DIR = "validation"
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # "no": float32, no autocast


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One trial's training knobs (the SLA settings travel separately, as an SLAConfig)."""

    model: str = knob(
        "tiny",
        None,  # checked with data and lora (_model_errors)
        f"a preset ({', '.join(PRESETS)}) or a local diffusers Wan pipeline or "
        "WanTransformer3DModel directory (used as the base model as is)",
        cli=False,  # --preset or --model-dir
    )
    data: DataConfig = section(
        DataConfig, "a DataConfig or a mapping", "where clips come from and their shape"
    )
    steps: int = knob(30, POSITIVE_INT, "optimizer steps", searchable=True)
    objective: Objective = knob(
        "flow_matching",
        one_of(OBJECTIVES),
        "flow_matching (the velocity noise - x0 of the data) or distill (the dense base's "
        "velocity on the same noised latent, timestep and text: the untouched base, frozen)",
        searchable=True,
    )
    flow_weight: float = knob(
        0.0,
        NON_NEGATIVE_NUMBER,
        "distill on clips: add this times the flow-matching loss (0: the teacher's alone)",
        searchable=True,
    )
    # Not searchable: a preset's base is pre-trained with it (part of the base's cache key), so
    # each value would fine-tune another base.
    batch_size: int = knob(4, POSITIVE_INT, "clips per process per micro-batch")
    grad_accum: int = knob(1, POSITIVE_INT, "micro-batches per optimizer step")
    lr: float = knob(3e-4, POSITIVE_NUMBER, "learning rate (AdamW)", searchable=True)
    warmup_steps: int = knob(5, NON_NEGATIVE_INT, "steps of linear warmup from 0", searchable=True)
    lr_schedule: LrSchedule = knob(
        "constant",
        one_of(LR_SCHEDULES),
        "constant, or cosine (to 0 after the warmup)",
        searchable=True,
    )
    weight_decay: float = knob(0.0, NON_NEGATIVE_NUMBER, "AdamW's", searchable=True)
    learned_lr_scale: float = knob(
        1.0,
        POSITIVE_NUMBER,
        "the learning rate of SLA's learned parts (sla.router learned: its projections; sla.mix "
        "alpha: alpha) as a multiple of lr, warmup and schedule included",
        searchable=True,
    )
    max_grad_norm: float = knob(1.0, NON_NEGATIVE_NUMBER, "gradient clipping (0 disables it)")
    train_base: bool = knob(
        True,
        BOOL,
        "fine-tune the base weights too (the paper does); false trains only SLA's proj_l (and "
        "a LoRA adapter: lora needs it false, which from_dict sets when it is not given)",
        flag=("--freeze-base", "train only SLA's proj_l (train_base false)"),
    )
    mixed_precision: MixedPrecision = knob(
        "auto", one_of(MIXED_PRECISION), "auto (bf16 on CUDA, no on CPU), no, bf16 or fp16"
    )
    parallel: Parallel = knob(
        "ddp",
        one_of(PARALLEL),
        "how a trial's processes hold the model: ddp (each a whole copy) or fsdp (sharded with "
        "FSDP2, per transformer block; with one process the same as ddp)",
    )
    experts: Experts = knob(
        "both",
        one_of(EXPERTS),
        "a two-expert pipeline's (Wan2.2 A14B) experts that the trial fine-tunes and gives SLA, "
        "each on its own timesteps: both, high_noise (transformer) or low_noise (transformer_2); "
        "an expert not trained keeps its base weights and dense attention",
        searchable=True,
    )
    seed: int = knob(
        0,
        NON_NEGATIVE_INT,
        "the trial's own randomness (data order, noise, timesteps, proj_l init, evaluation "
        "noise); a sweep's repeats vary it",
    )
    base_seed: int | None = knob(
        None,
        or_null(NON_NEGATIVE_INT),
        "what repeats of a config share (a preset's initialisation and pre-trained base, the "
        "digits clips); None: seed",
    )
    timestep_sampling: TimestepSampling = knob(
        "logit_normal",
        one_of(TIMESTEP_SAMPLING),
        "flow-matching t ~ logit_normal or uniform, then shifted",
    )
    timestep_shift: float | None = knob(
        None,
        or_null(POSITIVE_NUMBER, ""),
        "the shift of t (None: a pipeline's scheduler shift, 1.0 for a preset)",
    )
    log_every: int = knob(10, POSITIVE_INT, "progress line and train metrics every N steps")
    eval_every: int = knob(
        0, NON_NEGATIVE_INT, "full evaluation every N steps (0: at the start and the end only)"
    )
    checkpoint_every: int = knob(
        0, NON_NEGATIVE_INT, "a checkpoint every N steps (0: at the end only)"
    )
    keep_checkpoints: int = knob(
        0,
        NON_NEGATIVE_INT,
        "how many of the newest local checkpoint directories to keep once the callback has "
        "returned (0: all; a Ray worker's report has already copied them to storage)",
    )
    sample_steps: int = knob(8, POSITIVE_INT, "Euler steps of the flow ODE for val/sample_psnr")
    base_steps: int = knob(
        200,
        NON_NEGATIVE_INT,
        "full-attention pre-training steps of a preset's base model (cached by config)",
    )
    base_lr: float = knob(1e-3, POSITIVE_NUMBER, "learning rate of that pre-training")
    base_cache_dir: str | None = knob(
        None,
        PATH_OR_NULL,
        "where pre-trained base models are cached (None: $SLA_SWEEP_CACHE or ~/.cache/sla-sweep)",
    )
    gradient_checkpointing: bool = knob(
        False, BOOL, "recompute block activations in backward (long sequences on a GPU)"
    )
    compile: bool = knob(
        False,
        BOOL,
        "torch.compile each transformer block after SLA injection (only SLA's attention call "
        "stays eager): compile time once per trial, faster steps on long runs",
    )
    validation: ValidationConfig = section(
        ValidationConfig,
        "a ValidationConfig or a mapping",
        "videos from prompts by the trial's model and the untouched base (a pipeline)",
    )
    lora: LoraConfig | None = section(
        LoraConfig,
        "a mapping of rank, alpha, dropout, target_modules or null",
        "a LoRA adapter over the frozen base, trained with SLA's proj_l (None: no adapter)",
        optional=True,
    )

    def __post_init__(self) -> None:
        for name, cls in sections(type(self)).items():
            if isinstance(getattr(self, name), Mapping):  # from_dict / YAML: a nested mapping
                object.__setattr__(self, name, cls(**getattr(self, name)))
        errors = [*_model_errors(self), *field_errors(self), *_cross_errors(self)]
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a (possibly nested) mapping; unknown keys are refused with the allowed ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        errors = [
            f"unknown train key {k!r}; allowed: {', '.join(sorted(known))}"
            for k in values
            if k not in known
        ]
        nested = {f.name: f for f in dataclasses.fields(cls) if is_section(f)}
        kwargs = {k: v for k, v in values.items() if k in known and k not in nested}
        if values.get("lora") is not None and "train_base" not in values:
            kwargs["train_base"] = False  # an adapter trains over a frozen base
        for name, f in nested.items():
            section_cls = f.metadata["section"]
            section_known = {g.name for g in dataclasses.fields(section_cls)}
            if f.metadata["optional"] and values.get(name) is None:
                kwargs[name] = None  # absent or null: None (no adapter), not the defaults
                continue
            given = values.get(name, {})
            if not isinstance(given, Mapping):
                errors.append(
                    f"{name} ({given!r}) must be a mapping of {', '.join(sorted(section_known))}"
                )
                given = {}
            errors += [
                f"unknown {name} key {k!r}; allowed: {', '.join(sorted(section_known))}"
                for k in given
                if k not in section_known
            ]
            kwargs[name] = section_cls(**{k: v for k, v in given.items() if k in section_known})
        config, problem = _construct(cls, kwargs)
        if problem or errors:  # every problem at once: the unknown keys and the values'
            raise ValueError("; ".join([*errors, *([problem] if problem else [])]))
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def clip_shape(self) -> tuple[int, int]:
        """(frames, size) of a preset's digits clips: data.frames/size, else the preset's; 0 where
        neither says (a folder's clips bring their own shape; a pipeline's see `clip_hw`)."""
        preset = PRESETS.get(self.model)
        frames = self.data.frames or (preset.frames if preset else 0)
        size = self.data.size or (preset.size if preset else 0)
        return frames, size

    @property
    def data_seed(self) -> int:
        """The seed of what repeats share: the preset's base and the digits clips."""
        return self.seed if self.base_seed is None else self.base_seed

    @property
    def frozen_base(self) -> bool:
        """Whether the base's weights stay as they are (LoRA, or train_base false): checkpoints
        then hold only what trains, and name the base instead of copying it."""
        return self.lora is not None or not self.train_base

    @property
    def is_pipeline(self) -> bool:
        """Whether `model` is a diffusers pipeline directory (VAE and text encoder beside it)."""
        if self.model in PRESETS:
            return False
        from orchestrator.models.pipeline import is_pipeline_dir  # diffusers: a path only

        return is_pipeline_dir(self.model)

    @property
    def flow_shift(self) -> float:
        """The timestep shift in use: timestep_shift, else a pipeline scheduler's, else 1.0."""
        if self.timestep_shift is not None:
            return float(self.timestep_shift)
        if self.is_pipeline:
            # models.pipeline imports torch (models.weights); the CLI imports this module
            from orchestrator.models.pipeline import read_pipeline

            return read_pipeline(self.model, weights=("transformer",)).shift
        return 1.0

    @property
    def text_len(self) -> int:
        """L of the text context the recipe feeds the model."""
        return text_len(self.model)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _construct(cls: type, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
    """(cls(**kwargs), None), or (None, why) when the values are invalid."""
    try:
        return cls(**kwargs), None
    except ValueError as exc:
        return None, str(exc)


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


# ---- checks that span several fields (each field's own: field_errors) ----------------------


def _model_errors(c: TrainConfig) -> list[str]:
    """The model, and the clip shape it needs: a local model's, a pipeline's VAE and patch."""
    if not isinstance(c.model, str):
        return [f"model ({c.model!r}) must be a preset name ({', '.join(PRESETS)}) or a path"]
    errors = []
    data = c.data if isinstance(c.data, DataConfig) else None
    reason = model_source_error(c.model)
    if reason:
        errors.append(reason)
    elif c.model not in PRESETS and data is not None and (data.source == "digits" or c.is_pipeline):
        if data.frames is None or data.size is None:
            what = "pipeline" if c.is_pipeline else "local model directory"
            errors.append(f"data.frames and data.size must be given for a {what} ({c.model!r})")
    if data is not None:
        errors += shape_errors(c)
    return errors


def _cross_errors(c: TrainConfig) -> list[str]:
    """Validation prompts need a pipeline; LoRA needs a frozen base and linears of its model."""
    errors = []
    if isinstance(c.validation, ValidationConfig) and c.validation.prompts:
        if isinstance(c.model, str) and not c.is_pipeline:
            errors.append(
                "validation.prompts need a pipeline model (a directory with model_index.json, "
                f"its VAE and text encoder); model is {c.model!r}"
            )
    errors += parallel_errors(c) + objective_errors(c)
    if isinstance(c.model, str) and c.experts in EXPERTS and (c.experts != "both" or c.is_pipeline):
        from orchestrator.models.experts import expert_errors  # imports torch: see flow_shift

        errors += expert_errors(
            c.model, is_pipeline=c.is_pipeline, experts=c.experts, lora=c.lora is not None
        )
    if not isinstance(c.lora, LoraConfig):
        return errors  # None, or the field's own check says what it must be
    model_ok = isinstance(c.model, str) and model_source_error(c.model) is None
    if model_ok and not field_errors(c.lora):
        from orchestrator.models.weights import lora_problems  # the model's linears, meta device

        errors += lora_problems(c.model, c.lora.rank, c.lora.target_modules)
    if c.train_base is True:
        errors.append(
            "train_base (true) with lora: a LoRA trial trains the adapter and SLA's proj_l over "
            "a frozen base; set train_base false, or drop lora for a full fine-tune"
        )
    return errors
