"""A local diffusers Wan pipeline directory: its shapes read from configs and checked. Loading its
parts and the VAE / text-encoder calls that turn clips and captions into what the transformer
trains on are in pipeline_models.py.

`read_pipeline` reads JSON configs and the weights' headers (never their data) and reports every
problem at once: each weight file complete, and the transformer's and the VAE's tensors the ones
their configs describe.
Conventions, all as diffusers' WanPipeline has them:

- pixels are (B, 3, F, H, W) in [-1, 1]; latents are (B, z_dim, F', H', W') with
  F' = (F - 1) / scale_temporal + 1 and H' = H / scale_spatial, W' = W / scale_spatial;
- latents are normalised: z = (x - latents_mean) / latents_std per channel (the VAE config's
  lists); the denoiser sees z, and decoding un-normalises before `vae.decode`;
- prompt embeddings are the text encoder's last hidden state trimmed to each prompt's token
  count (L_i, D); the transformer is fed them zero-padded to max_text_len, (B, max_text_len, D).
  The transformer's cross-attention has no mask, so the padded length changes its output:
  training and inference must pad to the same `max_text_len` (pass it to WanPipeline as
  `max_sequence_length`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import diffusers
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from orchestrator.models.weights import diffusers_problems, folder_shapes, transformer_problems

PIPELINE_CLASS = "WanPipeline"
WAN_TEXT_LEN = 512  # WanPipeline's default max_sequence_length
_NEEDS = {  # subfolder -> what a Wan pipeline needs there
    "transformer": "the WanTransformer3DModel to fine-tune (config.json and its weights)",
    "vae": "an AutoencoderKLWan (config.json and its weights)",
    "text_encoder": "a UMT5EncoderModel (config.json and its weights)",
    "tokenizer": "the text encoder's tokenizer (tokenizer.json or spiece.model)",
    "scheduler": "a flow-matching scheduler (scheduler_config.json)",
}
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model")
_CHECKED: dict[tuple, list[str]] = {}  # (folder, config, weight shapes) -> problems


class PipelineError(ValueError):
    """A directory that is not a usable Wan pipeline; `problems` holds one line per problem."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        self.root = root
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{root} is not a usable Wan pipeline ({count}):\n{lines}")


@dataclasses.dataclass(frozen=True)
class PipelineInfo:
    """The shapes of a Wan pipeline directory, as WanPipeline derives them from its configs."""

    root: Path
    pipeline_class: str
    scheduler_class: str
    z_dim: int  # VAE latent channels
    scale_temporal: int  # WanPipeline.vae_scale_factor_temporal
    scale_spatial: int  # WanPipeline.vae_scale_factor_spatial
    patch: tuple[int, int, int]  # the transformer's (t, h, w) patch
    in_channels: int  # the transformer's; equals z_dim
    text_dim: int  # the transformer's text_dim; equals text_encoder_dim
    text_encoder_dim: int  # the text encoder's d_model
    max_text_len: int  # prompts are padded to this many tokens
    shift: float  # the scheduler's flow shift
    latents_mean: tuple[float, ...]  # z_dim entries
    latents_std: tuple[float, ...]  # z_dim entries
    expand_timesteps: bool  # model_index.json's flag (Wan2.2 TI2V: per-token timesteps)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(z_dim, F', H', W') of a clip of `frames` x `height` x `width` pixels."""
        errors = self.size_errors(frames, height, width)
        if errors:
            raise ValueError("; ".join(errors))
        latent_frames = (frames - 1) // self.scale_temporal + 1
        return self.z_dim, latent_frames, height // self.scale_spatial, width // self.scale_spatial

    def size_errors(
        self,
        frames: int,
        height: int,
        width: int,
        *,
        names: tuple[str, str, str] = ("frames", "height", "width"),
    ) -> list[str]:
        """Why a clip size does not fit the VAE and the patch, one line per bad value (none: fine).

        `names` are how the caller's config calls frames, height and width (e.g. "data.frames",
        "data.size", "data.size"); a line that would repeat is given once.
        """
        st, ss = self.scale_temporal, self.scale_spatial
        errors = []
        if frames < 1 or (frames - 1) % st:
            low = max(1, (frames - 1) // st * st + 1)
            errors.append(
                f"{names[0]} ({frames}) must be {st}k+1 for the VAE's {st}x temporal compression,"
                f" e.g. {low} or {low + st}"
            )
        elif ((frames - 1) // st + 1) % self.patch[0]:
            errors.append(
                f"{names[0]} ({frames}) gives {(frames - 1) // st + 1} latent frames, which the"
                f" transformer's temporal patch ({self.patch[0]}) does not divide"
            )
        _, ph, pw = self.patch
        for name, value, patch in ((names[1], height, ph), (names[2], width, pw)):
            multiple = ss * patch
            if value < multiple or value % multiple:
                low = max(multiple, value // multiple * multiple)
                line = (
                    f"{name} ({value}) must be a multiple of {multiple} (the VAE's {ss}x times the"
                    f" {ph}x{pw} patch), e.g. {low} or {low + multiple}"
                )
                if line not in errors:
                    errors.append(line)
        return errors


def is_pipeline_dir(path: str | Path) -> bool:
    """Whether `path` looks like a diffusers pipeline directory (it has model_index.json)."""
    return (Path(path).expanduser() / "model_index.json").is_file()


WEIGHT_PARTS = ("transformer", "vae", "text_encoder")


def read_pipeline(path: str | Path, *, weights: tuple[str, ...] = WEIGHT_PARTS) -> PipelineInfo:
    """Read a local Wan pipeline's configs and the weight headers of the `weights` components
    (never the weights' data); raise PipelineError listing every problem. The driver checks
    every component before anything starts; a trial, which trains on the encoded cache and
    loads only the transformer, checks the transformer's alone."""
    root = Path(path).expanduser()
    if not root.is_dir():
        parts = ", ".join(f"{name}/" for name in _NEEDS)
        raise PipelineError(
            root,
            [f"{root}: not a directory; a Wan pipeline is a folder with model_index.json, {parts}"],
        )
    problems: list[str] = []
    index = _read_json(
        root / "model_index.json", "the pipeline's index (save_pretrained writes it)", problems
    )
    index_fields = _index_fields(index, root / "model_index.json", problems)
    vae = _model_config(root / "vae", _NEEDS["vae"], problems)
    transformer = _model_config(root / "transformer", _NEEDS["transformer"], problems)
    text_encoder = _model_config(root / "text_encoder", _NEEDS["text_encoder"], problems)
    tokenizer = _tokenizer_config(root / "tokenizer", problems)
    scheduler = _scheduler_config(root / "scheduler", problems)

    parts = [
        index_fields,
        _vae_fields(vae, root / "vae" / "config.json", problems),
        _transformer_fields(transformer, root / "transformer" / "config.json", problems),
        _text_encoder_fields(text_encoder, root / "text_encoder" / "config.json", problems),
        _scheduler_fields(scheduler, root / "scheduler" / "scheduler_config.json", problems),
        _tokenizer_fields(tokenizer),
    ]
    fields: dict[str, Any] = {"root": root}
    for part in parts:
        fields.update(part or {})
    problems.extend(_cross_problems(fields, root))
    configs_sound = not problems  # tensors are compared with configs only once those are sound
    for part, cls, config in (("transformer", WanTransformer3DModel, transformer),
                              ("vae", AutoencoderKLWan, vae), ("text_encoder", None, None)):  # fmt: skip
        if part in weights and (root / part).is_dir():
            problems.extend(weight_problems(root / part, cls, config if configs_sound else None))
    if problems:
        raise PipelineError(root, problems)
    del fields["out_channels"]  # checked against z_dim; in_channels is what PipelineInfo keeps
    return PipelineInfo(**fields)


def _read_json(path: Path, need: str, problems: list[str]) -> dict[str, Any] | None:
    """A JSON object file, or None with a problem line (missing, not JSON, not an object)."""
    if not path.is_file():
        problems.append(f"{path}: missing; a Wan pipeline needs {need} there")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: not readable JSON ({exc}); it must hold {need}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: holds a {type(data).__name__}, expected a JSON object ({need})")
        return None
    return data


def _index_fields(
    index: dict[str, Any] | None, path: Path, problems: list[str]
) -> dict[str, Any] | None:
    """pipeline_class and expand_timesteps from model_index.json."""
    if index is None:
        return None
    name = index.get("_class_name")
    if name != PIPELINE_CLASS:
        problems.append(
            f"{path}: _class_name is {name!r}; sla-sweep fine-tunes text-to-video {PIPELINE_CLASS}s"
        )
    second = index.get("transformer_2")
    if isinstance(second, list) and any(second):
        problems.append(
            f"{path}: has a transformer_2 (a two-expert Wan2.2 A14B pipeline); sla-sweep"
            " fine-tunes one transformer"
        )
    return {"pipeline_class": name, "expand_timesteps": bool(index.get("expand_timesteps", False))}


def _missing_folder(folder: Path, need: str, problems: list[str]) -> bool:
    if folder.is_dir():
        return False
    problems.append(f"{folder}/: missing; a Wan pipeline needs {need} there")
    return True


def _model_config(folder: Path, need: str, problems: list[str]) -> dict[str, Any] | None:
    """A model subfolder's config.json, checking that its weight files are there too."""
    if _missing_folder(folder, need, problems):
        return None
    config = _read_json(folder / "config.json", f"the config of {need}", problems)
    problems.extend(_weight_problems(folder, need))
    return config


def _weight_problems(folder: Path, need: str) -> list[str]:
    """Missing weights: no *.safetensors / *.bin, or shards that a *.index.json names but lacks."""
    indexes = sorted(folder.glob("*.index.json"))
    if not indexes:
        if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
            return []
        return [
            f"{folder}/: no weight files; {need} needs *.safetensors or *.bin"
            " (or a sharded *.index.json with its shards)"
        ]
    problems = []
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as exc:
            problems.append(f"{index}: not a readable shard index with a weight_map ({exc})")
            continue
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            problems.append(f"{index}: names shards that are missing: {', '.join(missing)}")
    return problems


def weight_problems(folder: Path, cls: type | None, config: dict[str, Any] | None) -> list[str]:
    """A model folder's weight files: each complete (safetensors) or weights-only (.bin), and,
    for a diffusers `cls` with its `config`, every name and shape from_pretrained would load.
    Only headers are read (orchestrator.models.weights)."""
    shapes, problems = folder_shapes(folder)
    if problems or cls is None or config is None:
        return problems
    key = (
        str(folder),
        json.dumps(config, sort_keys=True, default=str),
        tuple(sorted(shapes.items())),
    )
    if key not in _CHECKED:  # read_pipeline runs in every trial: the model is built once
        config = {**_init_defaults(cls), **config}
        where = folder / "config.json"
        if cls is WanTransformer3DModel:  # its depth and size first: no 40,000-block build
            _CHECKED[key] = transformer_problems(config, shapes, where)
        else:
            _CHECKED[key] = diffusers_problems(cls, config, shapes, where)
    return list(_CHECKED[key])


def _tokenizer_config(folder: Path, problems: list[str]) -> dict[str, Any] | None:
    """tokenizer_config.json ({} when absent), checking that a tokenizer file is there."""
    if _missing_folder(folder, _NEEDS["tokenizer"], problems):
        return None
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        problems.append(
            f"{folder}/: no tokenizer file; a Wan pipeline needs {' or '.join(_TOKENIZER_FILES)}"
        )
    config_path = folder / "tokenizer_config.json"
    if not config_path.exists():
        return {}
    return _read_json(config_path, "the tokenizer's settings", problems)


def _scheduler_config(folder: Path, problems: list[str]) -> dict[str, Any] | None:
    if _missing_folder(folder, _NEEDS["scheduler"], problems):
        return None
    return _read_json(folder / "scheduler_config.json", _NEEDS["scheduler"], problems)


def _init_defaults(cls: type) -> dict[str, Any]:
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
    return {**_init_defaults(cls), **config}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _bad_ints(config: dict[str, Any], keys: tuple[str, ...], path: Path) -> list[str]:
    return [
        f"{path}: {key} ({config.get(key)!r}) must be a positive integer"
        for key in keys
        if not _positive_int(config.get(key))
    ]


def _vae_fields(
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


def _transformer_fields(
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


def _text_encoder_fields(
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


def _scheduler_fields(
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
    elif "use_flow_sigmas" in _init_defaults(cls):  # a solver that can run a flow schedule
        flow = {**_init_defaults(cls), **config}
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


def _tokenizer_fields(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """max_text_len: WanPipeline's 512, or the tokenizer's model_max_length when that is smaller."""
    if config is None:
        return None
    limit = config.get("model_max_length")
    if _positive_int(limit) and limit < WAN_TEXT_LEN:
        return {"max_text_len": limit}
    return {"max_text_len": WAN_TEXT_LEN}


def _cross_problems(fields: dict[str, Any], root: Path) -> list[str]:
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
