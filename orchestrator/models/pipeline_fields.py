"""The checks of a Wan pipeline directory's configs, one function per component: each reads the
fields PipelineInfo keeps from its config (diffusers' defaults filled in for the keys it lacks),
appends a problem line per bad value and returns None when any was found; `cross_problems` checks
what two components must agree on. pipeline.py's read_pipeline reads the files and calls these."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import diffusers
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from orchestrator.models.experts import experts_of

PIPELINE_CLASS = "WanPipeline"
WAN_TEXT_LEN = 512  # WanPipeline's default max_sequence_length


def index_fields(
    index: dict[str, Any] | None, path: Path, problems: list[str]
) -> dict[str, Any] | None:
    """pipeline_class, expand_timesteps, the experts and boundary_ratio from model_index.json.

    A Wan2.2 A14B pipeline names a second transformer (`transformer_2`, the low-noise expert)
    and the `boundary_ratio` between them: `transformer` serves timesteps at or above
    boundary_ratio * 1000, `transformer_2` those below (as WanPipeline switches)."""
    if index is None:
        return None
    name = index.get("_class_name")
    if name != PIPELINE_CLASS:
        problems.append(
            f"{path}: _class_name is {name!r}; sla-sweep fine-tunes text-to-video {PIPELINE_CLASS}s"
        )
    experts = experts_of(index)
    ratio = index.get("boundary_ratio")
    if len(experts) == 2:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
            problems.append(
                f"{path}: boundary_ratio ({ratio!r}) must be a number between 0 and 1 when the"
                " pipeline has a transformer_2 (the timestep fraction where its experts switch)"
            )
            ratio = None
    else:
        ratio = None  # one transformer serves every timestep (WanPipeline ignores the ratio)
    return {
        "pipeline_class": name,
        "expand_timesteps": bool(index.get("expand_timesteps", False)),
        "experts": experts,
        "boundary_ratio": None if ratio is None else float(ratio),
    }


def expert_problems(
    first: dict[str, Any] | None, second: dict[str, Any] | None, path: Path
) -> list[str]:
    """transformer_2's shapes that must equal transformer's (both see the same latents and text)."""
    if first is None or second is None:
        return []
    return [
        f"{path}: {key} ({second[key]!r}) must equal transformer's ({first[key]!r}): both experts"
        " denoise the same latents from the same prompt embeddings"
        for key in ("patch", "in_channels", "out_channels", "text_dim")
        if first[key] != second[key]
    ]


def init_defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of `cls.__init__`: what from_pretrained uses for keys a config lacks."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _with_defaults(
    cls: type, config: dict[str, Any] | None, path: Path, problems: list[str]
) -> dict[str, Any] | None:
    """A model config of class `cls` completed with the defaults from_pretrained would use."""
    if config is None:
        return None
    name = cls.__name__
    if config.get("_class_name") != name:
        article = "an" if name[0] in "AEIOU" else "a"
        problems.append(
            f"{path}: _class_name is {config.get('_class_name')!r}; a Wan pipeline's"
            f" {path.parent.name} must be {article} {name}"
        )
        return None
    return {**init_defaults(cls), **config}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _bad_ints(config: dict[str, Any], keys: tuple[str, ...], path: Path) -> list[str]:
    return [
        f"{path}: {key} ({config.get(key)!r}) must be a positive integer"
        for key in keys
        if not _positive_int(config.get(key))
    ]


def vae_fields(
    config: dict[str, Any] | None, path: Path, problems: list[str]
) -> dict[str, Any] | None:
    """z_dim, the scale factors and the latent statistics, with AutoencoderKLWan's defaults."""
    config = _with_defaults(AutoencoderKLWan, config, path, problems)
    if config is None:
        return None
    bad = _bad_ints(config, ("z_dim", "scale_factor_temporal", "scale_factor_spatial"), path)
    z_dim = config["z_dim"]
    for key in ("latents_mean", "latents_std"):
        values = config[key]
        numbers = isinstance(values, list) and all(isinstance(v, (int, float)) for v in values)
        if not numbers or len(values) != z_dim:
            bad.append(f"{path}: {key} must be a list of z_dim ({z_dim}) numbers, got {values!r}")
    if not bad and any(s <= 0 for s in config["latents_std"]):
        bad.append(f"{path}: latents_std must be positive, got {config['latents_std']!r}")
    problems.extend(bad)
    if bad:
        return None
    return {
        "z_dim": z_dim,
        "scale_temporal": config["scale_factor_temporal"],
        "scale_spatial": config["scale_factor_spatial"],
        "latents_mean": tuple(float(v) for v in config["latents_mean"]),
        "latents_std": tuple(float(v) for v in config["latents_std"]),
    }


def transformer_fields(
    config: dict[str, Any] | None, path: Path, problems: list[str]
) -> dict[str, Any] | None:
    """patch, in/out channels and text_dim, with WanTransformer3DModel's defaults."""
    config = _with_defaults(WanTransformer3DModel, config, path, problems)
    if config is None:
        return None
    bad = _bad_ints(config, ("in_channels", "out_channels", "text_dim"), path)
    patch = config["patch_size"]
    if not (
        isinstance(patch, (list, tuple)) and len(patch) == 3 and all(map(_positive_int, patch))
    ):
        bad.append(f"{path}: patch_size ({patch!r}) must be three positive integers (t, h, w)")
    problems.extend(bad)
    if bad:
        return None
    return {
        "patch": tuple(patch),
        "in_channels": config["in_channels"],
        "text_dim": config["text_dim"],
        "out_channels": config["out_channels"],
    }


def text_encoder_fields(
    config: dict[str, Any] | None, path: Path, problems: list[str]
) -> dict[str, Any] | None:
    if config is None:
        return None
    bad = []
    if config.get("model_type") != "umt5":
        bad.append(
            f"{path}: model_type is {config.get('model_type')!r}; a Wan pipeline's text encoder"
            " must be a UMT5EncoderModel ('umt5')"
        )
    bad.extend(_bad_ints(config, ("d_model",), path))
    problems.extend(bad)
    return None if bad else {"text_encoder_dim": config["d_model"]}


def scheduler_fields(
    config: dict[str, Any] | None, path: Path, problems: list[str]
) -> dict[str, Any] | None:
    """The scheduler's class and flow shift (`shift` or `flow_shift`; 1.0 when absent)."""
    if config is None:
        return None
    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    bad = []
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        bad.append(f"{path}: _class_name ({name!r}) is not a diffusers scheduler class")
    elif "use_flow_sigmas" in init_defaults(cls):  # a solver that can run a flow schedule
        flow = {**init_defaults(cls), **config}
        if flow["use_flow_sigmas"] is not True or flow["prediction_type"] != "flow_prediction":
            bad.append(
                f"{path}: {name} must have use_flow_sigmas true and prediction_type"
                " 'flow_prediction' for a Wan (flow-matching) pipeline"
            )
    elif not name.startswith("FlowMatch"):
        bad.append(f"{path}: {name} is not a flow-matching scheduler; Wan pipelines need one")
    if config.get("use_dynamic_shifting"):
        bad.append(f"{path}: use_dynamic_shifting is true; sla-sweep trains with a fixed shift")
    shift = config.get("shift", config.get("flow_shift", 1.0))
    if not isinstance(shift, (int, float)) or isinstance(shift, bool) or shift <= 0:
        bad.append(f"{path}: the flow shift ({shift!r}) must be a positive number")
    problems.extend(bad)
    return None if bad else {"scheduler_class": name, "shift": float(shift)}


def tokenizer_fields(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """max_text_len: WanPipeline's 512, or the tokenizer's model_max_length when that is smaller."""
    if config is None:
        return None
    limit = config.get("model_max_length")
    if _positive_int(limit) and limit < WAN_TEXT_LEN:
        return {"max_text_len": limit}
    return {"max_text_len": WAN_TEXT_LEN}


def cross_problems(fields: dict[str, Any], root: Path) -> list[str]:
    """Shapes that must agree between components (each pair checked when both sides were read)."""
    transformer, vae = root / "transformer" / "config.json", root / "vae" / "config.json"
    problems = [
        f"{transformer}: {key} ({fields[key]}) must equal the VAE's z_dim ({fields['z_dim']}, {vae})"
        for key in ("in_channels", "out_channels")
        if key in fields and "z_dim" in fields and fields[key] != fields["z_dim"]
    ]
    text_dim, d_model = fields.get("text_dim"), fields.get("text_encoder_dim")
    if text_dim is not None and d_model is not None and text_dim != d_model:
        problems.append(
            f"{transformer}: text_dim ({text_dim}) must equal the text encoder's d_model"
            f" ({d_model}, {root / 'text_encoder' / 'config.json'})"
        )
    return problems
