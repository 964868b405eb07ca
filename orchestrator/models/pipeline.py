"""A local diffusers Wan pipeline directory: its shapes read from configs and checked. Loading its
parts and the VAE / text-encoder calls that turn clips and captions into what the transformer
trains on are in pipeline_models.py; the checks of each component's config in pipeline_fields.py.

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
import json
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKLWan, WanTransformer3DModel

from orchestrator.models.experts import pipeline_experts as pipeline_experts
from orchestrator.models.pipeline_fields import PIPELINE_CLASS as PIPELINE_CLASS
from orchestrator.models.pipeline_fields import WAN_TEXT_LEN as WAN_TEXT_LEN
from orchestrator.models.pipeline_fields import (
    cross_problems,
    expert_problems,
    index_fields,
    init_defaults,
    scheduler_fields,
    text_encoder_fields,
    tokenizer_fields,
    transformer_fields,
    vae_fields,
)
from orchestrator.models.weights import (
    diffusers_problems,
    folder_shapes,
    text_encoder_problems,
    transformer_problems,
)

_NEEDS = {  # subfolder -> what a Wan pipeline needs there
    "transformer": "the WanTransformer3DModel to fine-tune (config.json and its weights)",
    "transformer_2": "the low-noise expert, a WanTransformer3DModel (config.json and its weights)",
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
    experts: tuple[str, ...] = ("transformer",)  # Wan2.2 A14B: ("transformer", "transformer_2")
    boundary_ratio: float | None = None  # where the experts switch (timestep / 1000)

    @property
    def two_experts(self) -> bool:
        """Whether the pipeline has a high-noise and a low-noise expert (Wan2.2 A14B)."""
        return len(self.experts) == 2

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
    index_part = index_fields(index, root / "model_index.json", problems)
    vae = _model_config(root / "vae", _NEEDS["vae"], problems)
    transformer = _model_config(root / "transformer", _NEEDS["transformer"], problems)
    text_encoder = _model_config(root / "text_encoder", _NEEDS["text_encoder"], problems)
    tokenizer = _tokenizer_config(root / "tokenizer", problems)
    scheduler = _scheduler_config(root / "scheduler", problems)
    experts = (index_part or {}).get("experts", ("transformer",))
    second = None
    if "transformer_2" in experts:
        second = _model_config(root / "transformer_2", _NEEDS["transformer_2"], problems)

    parts = [
        index_part,
        vae_fields(vae, root / "vae" / "config.json", problems),
        transformer_fields(transformer, root / "transformer" / "config.json", problems),
        text_encoder_fields(text_encoder, root / "text_encoder" / "config.json", problems),
        scheduler_fields(scheduler, root / "scheduler" / "scheduler_config.json", problems),
        tokenizer_fields(tokenizer),
    ]
    fields: dict[str, Any] = {"root": root}
    for part in parts:
        fields.update(part or {})
    problems.extend(cross_problems(fields, root))
    if second is not None:
        path = root / "transformer_2" / "config.json"
        problems.extend(expert_problems(parts[2], transformer_fields(second, path, problems), path))
    configs_sound = not problems  # tensors are compared with configs only once those are sound
    for part, cls, config in (("transformer", WanTransformer3DModel, transformer),
                              ("transformer_2", WanTransformer3DModel, second),
                              ("vae", AutoencoderKLWan, vae),
                              ("text_encoder", TEXT_ENCODER, text_encoder)):  # fmt: skip
        if part == "transformer_2" and part not in experts:
            continue
        if (part in weights or (part == "transformer_2" and "transformer" in weights)) and (
            root / part
        ).is_dir():
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


TEXT_ENCODER = "UMT5EncoderModel"  # a transformers model: checked by text_encoder_problems


def weight_problems(folder: Path, cls: Any, config: dict[str, Any] | None) -> list[str]:
    """A model folder's weight files: each complete (safetensors) or weights-only (.bin), and,
    for a diffusers `cls` (or TEXT_ENCODER) with its `config`, every name and shape
    from_pretrained would load.
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
        config = config if cls is TEXT_ENCODER else {**init_defaults(cls), **config}
        where = folder / "config.json"
        if cls is WanTransformer3DModel:  # its depth and size first: no 40,000-block build
            _CHECKED[key] = transformer_problems(config, shapes, where)
        elif cls is TEXT_ENCODER:
            _CHECKED[key] = text_encoder_problems(config, shapes, where)
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
