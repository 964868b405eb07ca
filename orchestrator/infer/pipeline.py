"""Pipeline trials after the sweep: text-to-video with SLA on, and whole-pipeline exports.

A pipeline trial fine-tuned the transformer of a local diffusers Wan pipeline directory (its
trial.json's train.model has model_index.json). Inference runs stock `diffusers.WanPipeline`,
loaded from that directory with the fine-tuned transformer (SLA injected, sla_attention.pt
replayed) in place of the original, and prompts padded to the pipeline's `max_text_len` as in
training. Each prompt is one call seeded with its own CPU generator (`seed`), so a video depends
on its prompt and the seed only, not on the device, the other prompts or their order.

    sla-sweep infer <pipeline checkpoint | pipeline export> --prompt "a digit" [--frames 9 --size 32]

writes into the output directory, per prompt `NN_<prompt slug>_seed<S>.mp4` (write_video) and
`.png` (write_frame_grid), then `frames.safetensors` ("frames": WanPipeline's float output,
(n, F, 3, H, W) in [0, 1], before any MP4 encoding) and `videos.json` (settings, SLA counters).

An export (`sla-sweep export TARGET OUT`) is a whole pipeline directory that stock
`WanPipeline.from_pretrained(OUT)` loads: the original components hard-linked (copied across
filesystems), transformer/ with the fine-tuned weights and no SLA tensors, and at OUT's top
sla_attention.pt, sla_config.json, inference.json (kind "pipeline": generation defaults and
provenance) and a model card.

Here: what a request asks for and the trial's defaults, and loading the trial's transformer;
pipeline_videos.py generates and writes the videos, pipeline_export.py writes an export and
precision.py resolves the compute precision.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import WanPipeline, WanTransformer3DModel

from orchestrator.infer.model import (
    INFERENCE_FILE,
    Attention,
    InferenceError,
    rebuild_checkpoint_model,
    running_config,
)
from orchestrator.models.experts import ExpertPair, pipeline_parts, sla_targets
from orchestrator.models.pipeline import PipelineInfo, is_pipeline_dir, read_pipeline
from orchestrator.models.wan_presets import PRESETS, load_local
from orchestrator.recipe.checkpoint import SLA_FILE, read_trial
from orchestrator.recipe.config import TrainConfig
from orchestrator.recipe.lora import load_exported_lora
from orchestrator.recipe.train import DEFAULT_VIDEO_FPS
from sla_kernel_glue import SLAConfig, SLAHandle, apply_sla, load_sla_state

if TYPE_CHECKING:
    from orchestrator.infer.target import Target

PIPELINE_KIND = "pipeline"  # inference.json's "kind" in a pipeline export
SIZE_NAMES = ("--frames", "--size", "--size")  # how size_errors names the values


@dataclasses.dataclass(frozen=True)
class VideoRequest:
    """What the command line asked for; None (or no prompts) takes the trial's default."""

    prompts: tuple[str, ...] = ()
    negative_prompt: str | None = None
    frames: int | None = None
    size: tuple[int, int] | None = None  # (H, W)
    steps: int | None = None
    guidance: float | None = None

    def given(self) -> list[str]:
        """The options that were set, as the command line spells them."""
        values = {"--prompt": self.prompts or None, "--negative-prompt": self.negative_prompt,
                  "--frames": self.frames, "--size": self.size, "--steps": self.steps,
                  "--guidance": self.guidance}  # fmt: skip
        return [flag for flag, value in values.items() if value is not None]


@dataclasses.dataclass(frozen=True)
class VideoSettings:
    """What one generation runs with; an export stores the trial's as its generation defaults."""

    prompts: tuple[str, ...]
    negative_prompt: str
    frames: int
    height: int
    width: int
    steps: int  # WanPipeline's num_inference_steps
    guidance_scale: float
    fps: float  # of the MP4s

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (prompts as a list)."""
        return {**dataclasses.asdict(self), "prompts": list(self.prompts)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VideoSettings:
        """Build from a mapping; missing or unknown keys are one ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = sorted(names - set(values)), sorted(set(values) - names)
        if missing or unknown:
            raise ValueError(
                f"generation settings: missing {missing or 'none'}, unknown {unknown or 'none'}"
            )
        return cls(**{**values, "prompts": tuple(values["prompts"])})

    @classmethod
    def of_trial(cls, train: TrainConfig) -> VideoSettings:
        """A pipeline trial's validation settings: its prompts, clip shape and sampler."""
        val, data = train.validation, train.data
        size = val.size or data.size
        height, width = (size, size) if isinstance(size, int) else size
        return cls(
            prompts=tuple(val.prompts), negative_prompt=val.negative_prompt,
            frames=int(val.frames or data.frames), height=int(height), width=int(width),
            steps=int(val.steps), guidance_scale=float(val.guidance_scale),
            fps=float(data.fps or DEFAULT_VIDEO_FPS),
        )  # fmt: skip

    def asked(self, request: VideoRequest) -> VideoSettings:
        """These defaults with what `request` sets instead."""
        height, width = request.size or (self.height, self.width)
        chosen = {"prompts": request.prompts or self.prompts, "height": height, "width": width,
                  "negative_prompt": request.negative_prompt, "frames": request.frames,
                  "steps": request.steps, "guidance_scale": request.guidance}  # fmt: skip
        return dataclasses.replace(self, **{k: v for k, v in chosen.items() if v is not None})


@dataclasses.dataclass
class PipelineTrial:
    """A pipeline trial's fine-tuned transformer (SLA injected unless dense) and its pipeline;
    a two-expert trial's `transformer` is the ExpertPair of both."""

    transformer: WanTransformer3DModel | ExpertPair
    handle: SLAHandle | None  # None when running dense
    sla: SLAConfig | None  # the trial's SLA settings (None: the full-attention control)
    defaults: VideoSettings
    info: PipelineInfo  # of the directory the other components come from
    source: dict[str, Any]  # provenance: checkpoint or export, step, pipeline, metrics
    experts: str = "both"  # a two-expert trial's train.experts: which experts have SLA

    def pipeline(self, device: torch.device) -> WanPipeline:
        """Stock WanPipeline from the pipeline directory, this transformer in place (float32)."""
        pipe = WanPipeline.from_pretrained(
            self.info.root, **pipeline_parts(self.transformer), dtype=torch.float32,
            local_files_only=True,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)


def pipeline_root(resolved: Target) -> Path | None:
    """The pipeline directory of a pipeline trial or export (None: a preset trial or export).

    An unreadable trial.json is None here: the preset loader then refuses it with its reason."""
    directory = resolved.directory
    if resolved.kind == "export":
        return directory if is_pipeline_export(directory) else None
    try:
        model = (read_trial(directory).get("train") or {}).get("model")
    except ValueError:
        return None
    if isinstance(model, str) and model not in PRESETS and is_pipeline_dir(model):
        return Path(model).expanduser().resolve()
    return None


def is_pipeline_export(directory: Path) -> bool:
    """Whether `directory` is an `sla-sweep export` of a pipeline trial."""
    if not (is_pipeline_dir(directory) and (directory / INFERENCE_FILE).is_file()):
        return False
    try:
        return json.loads((directory / INFERENCE_FILE).read_text()).get("kind") == PIPELINE_KIND
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def preset_refusal(resolved: Target, given: list[str]) -> str:
    """Why the pipeline options `given` do not apply to a preset trial or export (one line)."""
    model = "a transformer alone"
    if resolved.kind == "checkpoint":
        try:
            model = repr((read_trial(resolved.directory).get("train") or {}).get("model"))
        except ValueError:
            pass
    return (
        f"{', '.join(given)}: text-to-video options need a pipeline trial (trained on a diffusers "
        f"Wan pipeline directory with model_index.json); {resolved.name} was trained on {model}, "
        "which samples class-conditioned clips: run it without them"
    )


def video_defaults(resolved: Target, root: Path) -> VideoSettings:
    """The trial's generation defaults, read without loading any weights."""
    if resolved.kind == "export":
        return VideoSettings.from_dict(_export_info(root)["generation"])
    try:
        return VideoSettings.of_trial(
            TrainConfig.from_dict(read_trial(resolved.directory)["train"])
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InferenceError(
            f"{resolved.directory}: not a usable checkpoint directory ({exc})"
        ) from None


def check_settings(settings: VideoSettings, info: PipelineInfo, name: str) -> None:
    """InferenceError (one line) for sizes the VAE and patch cannot divide, or no prompts."""
    errors = info.size_errors(settings.frames, settings.height, settings.width, names=SIZE_NAMES)
    if errors:
        raise InferenceError("; ".join(errors))
    if not settings.prompts:
        raise InferenceError(
            f'{name} has no validation prompts to default to: pass --prompt "..." (once per video)'
        )
    empty = [p for p in settings.prompts if not p.strip()]
    if empty:
        raise InferenceError(f"--prompt ({empty[0]!r}) must be a non-empty string")


def load_pipeline_trial(
    resolved: Target, root: Path, *, attention: Attention, device: torch.device
) -> PipelineTrial:
    """The transformer of a pipeline checkpoint or export with SLA on (or dense), on `device`."""
    info = read_pipeline(root)
    if resolved.kind == "export":
        meta = _export_info(root)
        try:
            sla = SLAConfig.from_dict(meta["sla"])
        except (KeyError, ValueError, TypeError) as exc:
            raise InferenceError(
                f"{root / INFERENCE_FILE}: no valid SLA settings ({exc})"
            ) from None
        if attention == "sla" and not (root / SLA_FILE).is_file():
            raise InferenceError(
                f"{root} has no {SLA_FILE} (its SLA layers' weights): re-export the trial, or "
                "pass --attention dense to run these weights without SLA"
            )
        transformer = load_local(root)  # transformer/ (and transformer_2/: an ExpertPair)
        load_exported_lora(transformer, root)  # an unmerged LoRA export's adapter
        handle = None
        if attention == "sla":
            targets = sla_targets(transformer, str(meta.get("experts", "both")))
            handle = apply_sla(transformer, running_config(sla, device), targets=targets)
            try:
                load_sla_state(handle, root)
            except BaseException:
                handle.remove()
                raise
        source = {**meta.get("source", {}), "kind": "export", "export": str(root)}
        defaults = VideoSettings.from_dict(meta["generation"])
        experts = meta.get("experts", "both")
        return PipelineTrial(transformer.to(device), handle, sla, defaults, info, source, experts)
    loaded = rebuild_checkpoint_model(resolved.directory, attention=attention, device=device)
    source = {**loaded.source, "pipeline": str(root)}
    defaults = VideoSettings.of_trial(loaded.train)
    return PipelineTrial(
        loaded.model, loaded.handle, loaded.sla, defaults, info, source, loaded.train.experts
    )


def _export_info(root: Path) -> dict[str, Any]:
    try:
        meta = json.loads((root / INFERENCE_FILE).read_text())
        VideoSettings.from_dict(meta["generation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InferenceError(
            f"{root / INFERENCE_FILE}: not a valid pipeline export description ({exc})"
        ) from None
    return meta
