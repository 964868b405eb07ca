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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import save_file

from orchestrator.data.video_writers import write_frame_grid, write_video
from orchestrator.infer.export_info import card_metrics, lora_info
from orchestrator.infer.model import (
    INFERENCE_FILE,
    Attention,
    InferenceError,
    rebuild_checkpoint_model,
    running_config,
)
from orchestrator.infer.outputs import OutputFolder
from orchestrator.infer.results import (
    InferResult,
    checked_sla_counts,
    default_out,
    log_to_mlflow_run,
    warn_dense,
)
from orchestrator.models.pipeline import PipelineInfo, is_pipeline_dir, read_pipeline
from orchestrator.models.wan_presets import PRESETS
from orchestrator.recipe.checkpoint import SLA_FILE, read_trial
from orchestrator.recipe.compile import compiled_blocks
from orchestrator.recipe.config import TrainConfig
from orchestrator.recipe.lora import detach_lora, has_lora, load_exported_lora
from orchestrator.recipe.train import DEFAULT_VIDEO_FPS
from sla_kernel_glue import SLAConfig, SLAHandle, apply_sla, export_base_model, load_sla_state

if TYPE_CHECKING:
    from orchestrator.infer.target import Target

PIPELINE_KIND = "pipeline"  # inference.json's "kind" in a pipeline export
FRAMES_FILE = "frames.safetensors"  # WanPipeline's float frames: comparisons read these
SUMMARY_FILE = "videos.json"
SIZE_NAMES = ("--frames", "--size", "--size")  # how size_errors names the values
CARD_METRICS = ("val/loss", "val/loss_gap", "val/video_psnr", "val/video_ssim",
                "flops/attention_ratio")  # fmt: skip


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
    """A pipeline trial's fine-tuned transformer (SLA injected unless dense) and its pipeline."""

    transformer: WanTransformer3DModel
    handle: SLAHandle | None  # None when running dense
    sla: SLAConfig | None  # the trial's SLA settings (None: the full-attention control)
    defaults: VideoSettings
    info: PipelineInfo  # of the directory the other components come from
    source: dict[str, Any]  # provenance: checkpoint or export, step, pipeline, metrics

    def pipeline(self, device: torch.device) -> WanPipeline:
        """Stock WanPipeline from the pipeline directory, this transformer in place (float32)."""
        pipe = WanPipeline.from_pretrained(
            self.info.root, transformer=self.transformer, dtype=torch.float32,
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
        transformer = WanTransformer3DModel.from_pretrained(
            root / "transformer", local_files_only=True
        )
        load_exported_lora(transformer, root)  # an unmerged LoRA export's adapter
        handle = None
        if attention == "sla":
            handle = apply_sla(transformer, running_config(sla, device))
            try:
                load_sla_state(handle, root)
            except BaseException:
                handle.remove()
                raise
        source = {**meta.get("source", {}), "kind": "export", "export": str(root)}
        defaults = VideoSettings.from_dict(meta["generation"])
        return PipelineTrial(transformer.to(device), handle, sla, defaults, info, source)
    loaded = rebuild_checkpoint_model(resolved.directory, attention=attention, device=device)
    source = {**loaded.source, "pipeline": str(root)}
    defaults = VideoSettings.of_trial(loaded.train)
    return PipelineTrial(loaded.model, loaded.handle, loaded.sla, defaults, info, source)


def _export_info(root: Path) -> dict[str, Any]:
    try:
        meta = json.loads((root / INFERENCE_FILE).read_text())
        VideoSettings.from_dict(meta["generation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InferenceError(
            f"{root / INFERENCE_FILE}: not a valid pipeline export description ({exc})"
        ) from None
    return meta


PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "bf16" or "fp32": auto is bf16 on CUDA (the trial's mixed precision there), fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision ({precision!r}) must be one of auto, {', '.join(PRECISIONS)}")
    return precision


@contextlib.contextmanager
def autocast_forward(model: torch.nn.Module, device: torch.device, precision: str):
    """Run model's forward under torch.autocast at `precision` (weights stay float32, as in the
    trial's training and validation), until the block ends; fp32 changes nothing."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield model
        return
    forward, own = model.forward, "forward" in vars(model)

    def autocast(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device.type, dtype=dtype):
            return forward(*args, **kwargs)

    model.forward = autocast
    try:
        yield model
    finally:
        if own:
            model.forward = forward
        else:
            del model.forward  # the class's forward again


@torch.no_grad()
def generate_videos(
    pipe: WanPipeline,
    settings: VideoSettings,
    *,
    seed: int,
    max_text_len: int,
    seconds: list[float] | None = None,
) -> torch.Tensor:
    """WanPipeline's frames for every prompt: (n, F, 3, H, W) float32 on the CPU, in [0, 1].
    seconds, when given, gets each video's wall time (text encoding, denoising and decode)."""
    videos = []
    for prompt in settings.prompts:
        started = time.perf_counter()
        frames = pipe(
            prompt, negative_prompt=settings.negative_prompt, height=settings.height,
            width=settings.width, num_frames=settings.frames, num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale, generator=torch.Generator().manual_seed(seed),
            output_type="pt", max_sequence_length=max_text_len,
        ).frames  # fmt: skip
        videos.append(frames[0].float().cpu())  # a copy to the host: the GPU work is done
        if seconds is not None:
            seconds.append(time.perf_counter() - started)
    return torch.stack(videos)


def write_videos(
    out_dir: Path, videos: torch.Tensor, settings: VideoSettings, *, seed: int
) -> list[Path]:
    """An MP4 and a frame-grid PNG per prompt, and frames.safetensors; returns the paths.
    out_dir's earlier infer outputs are replaced, nothing else in it is touched
    (orchestrator.infer.outputs); videos.json, written next, is recorded as this run's too."""
    stems = _video_stems(settings, seed)
    OutputFolder.claim(out_dir).replace(video_files(settings, seed))
    files = []
    for name, frames in zip(stems, videos, strict=True):
        stem = out_dir / name
        pixels = frames.permute(1, 0, 2, 3) * 2 - 1  # (3, F, H, W) in [-1, 1]
        files.append(write_video(stem.with_suffix(".mp4"), pixels, fps=settings.fps))
        files.append(write_frame_grid(stem.with_suffix(".png"), pixels))
    save_file({"frames": videos.contiguous()}, str(out_dir / FRAMES_FILE))
    return [*files, out_dir / FRAMES_FILE]


def video_files(settings: VideoSettings, seed: int) -> list[str]:
    """The names of the files write_videos and run_pipeline_infer write, videos.json included."""
    names = [f"{stem}{ext}" for stem in _video_stems(settings, seed) for ext in (".mp4", ".png")]
    return [*names, FRAMES_FILE, SUMMARY_FILE]


def _video_stems(settings: VideoSettings, seed: int) -> list[str]:
    return [f"{i:02d}_{_slug(prompt)}_seed{seed}" for i, prompt in enumerate(settings.prompts)]


def _slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def run_pipeline_infer(
    resolved: Target,
    root: Path,
    request: VideoRequest,
    *,
    target: str,
    out: Path | None,
    seed: int,
    device: torch.device,
    attention: Attention,
    log_to_mlflow: bool,
    compile: bool,
    precision: str = "auto",
) -> InferResult:
    """Generate a pipeline trial's videos for the request with SLA on, write and log them."""
    info = read_pipeline(root)
    settings = video_defaults(resolved, root).asked(request)
    check_settings(settings, info, resolved.name)  # before anything loads or is written
    out_dir = Path(out) if out is not None else default_out(resolved, attention, seed)
    OutputFolder.claim(out_dir).check(video_files(settings, seed))  # may infer write them there
    started = time.perf_counter()
    trial = load_pipeline_trial(resolved, root, attention=attention, device=device)
    if attention == "dense" and trial.sla is not None:
        warn_dense(resolved.name, trial.sla)
    pipe = trial.pipeline(device)
    load_s = time.perf_counter() - started
    if trial.handle is not None:
        trial.handle.reset_counts()
    seconds: list[float] = []
    compute = resolve_precision(precision, device)
    with (
        compiled_blocks(trial.transformer) if compile else contextlib.nullcontext(),
        autocast_forward(trial.transformer, device, compute),
    ):
        videos = generate_videos(
            pipe, settings, seed=seed, max_text_len=info.max_text_len, seconds=seconds
        )
    sla_calls, fallbacks = checked_sla_counts(trial.handle, resolved.name)

    files = write_videos(out_dir, videos, settings, seed=seed)
    summary = {
        "target": target, "trial": resolved.trial_id, "mlflow_run_id": resolved.run_id,
        "attention": attention, "sla": None if trial.sla is None else trial.sla.to_dict(),
        "device": str(device), "seed": seed, "generation": settings.to_dict(),
        "max_text_len": info.max_text_len, "source": trial.source, "sla_calls": sla_calls,
        "fallbacks": fallbacks, "compile": compile, "videos": [f.name for f in files if f.suffix == ".mp4"],
        "precision": compute,
        "seconds": {"load": load_s, "per_video": seconds},  # the first video's includes compiling
    }  # fmt: skip
    files.append(out_dir / SUMMARY_FILE)
    files[-1].write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    print(f"videos: {len(settings.prompts)} (MP4 + frame grid each) in {out_dir}")
    if attention == "sla":
        print(
            f"SLA: {sla_calls} attention calls through SLA; dense fallbacks: {fallbacks or 'none'}"
        )
    artifact_path = f"videos/{attention}-seed{seed}"
    logged = log_to_mlflow_run(resolved, out_dir, artifact_path) if log_to_mlflow else None
    return InferResult(out_dir, files, attention, sla_calls, fallbacks, logged, summary)


# ---- export ---------------------------------------------------------------------------------
PIPELINE_CARD = """\
# {title}

A diffusers `WanPipeline` whose transformer was fine-tuned **with Sparse-Linear Attention (SLA)**
by sla-sweep.

**Keep SLA on at inference.** `transformer/` holds the fine-tuned weights without SLA's tensors;
each SLA layer's linear branch (`proj_l`) is in `sla_attention.pt` at the top of this directory.
`WanPipeline.from_pretrained` alone loads the pipeline with dense attention, and its videos will
be worse than what was measured in the sweep.

- SLA settings: `{sla}` (also in `sla_config.json`)
- Source: {source}
- Metrics at export: {metrics}
- Trained at: {frames} frames of {height}x{width}; prompts padded to {max_text_len} tokens

## Use

    sla-sweep infer {out_sh} --prompt {prompt_sh}      # MP4 + frame grid, SLA on

or in Python:

```python
import json

import torch
from diffusers import WanPipeline
from sla_kernel_glue import SLAConfig, apply_sla, load_sla_state

out = {out_py}
pipe = WanPipeline.from_pretrained(out, dtype=torch.float32, local_files_only=True)
sla = SLAConfig.from_dict(json.loads(open(f"{{out}}/sla_config.json").read()))
if not torch.cuda.is_available() and sla.backend == "triton":
    sla = sla.replace(backend="auto")  # the PyTorch reference off CUDA
handle = apply_sla(pipe.transformer, sla)  # every self-attention layer, as in training
load_sla_state(handle, out)  # each layer's proj_l from sla_attention.pt
frames = pipe(
    {prompt_py}, negative_prompt={negative!r}, num_frames={frames}, height={height},
    width={width}, num_inference_steps={steps}, guidance_scale={guidance},
    max_sequence_length={max_text_len}, generator=torch.Generator().manual_seed(0),
    output_type="pt",
).frames[0]  # (F, 3, H, W) in [0, 1]
```
"""


def export_pipeline(
    resolved: Target, trial: PipelineTrial, staging: Path, *, out: Path, merge: bool = False
) -> dict[str, int]:
    """Write the whole pipeline export into `staging` (renamed to `out` by the caller); a LoRA
    trial's adapter at its top (`pipe.load_lora_weights(OUT)`), or merged into transformer/.

    Returns how many component files were hard-linked and how many copied."""
    if trial.handle is None:
        raise InferenceError(f"{resolved.directory} holds no SLA trial; nothing SLA to export")
    counts = link_components(trial.info.root, staging)
    lora = lora_info(trial.transformer, merge)
    if has_lora(trial.transformer):
        detach_lora(trial.transformer, staging, merge=merge)
    export_base_model(trial.handle, staging / "transformer")
    os.replace(staging / "transformer" / SLA_FILE, staging / SLA_FILE)
    sla = trial.sla.to_dict()
    known = {"trial": resolved.trial_id, "mlflow_run_id": resolved.run_id,
             "tracking_uri": resolved.tracking_uri}  # fmt: skip
    source = {**trial.source, **{k: v for k, v in known.items() if v is not None}}
    (staging / "sla_config.json").write_text(json.dumps(sla, indent=2, sort_keys=True) + "\n")
    meta = {"kind": PIPELINE_KIND, "sla": sla, "generation": trial.defaults.to_dict(),
            "max_text_len": trial.info.max_text_len, "source": source, "lora": lora}  # fmt: skip
    (staging / INFERENCE_FILE).write_text(
        json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    )
    d = trial.defaults
    prompt = (d.prompts or ("a video",))[0]
    where = source.get("checkpoint") or source.get("export") or "unknown"
    trial_name = f"trial {source['trial']} " if source.get("trial") else ""
    card = PIPELINE_CARD.format(
        title=f"SLA fine-tune of {Path(source.get('pipeline') or trial.info.root).name}",
        sla=json.dumps(sla, sort_keys=True), source=f"{trial_name}{where} (step {source.get('step', '?')})",
        metrics=card_metrics(source, CARD_METRICS), out_sh=shlex.quote(str(out)),
        out_py=repr(str(out)), prompt_sh=shlex.quote(prompt), prompt_py=repr(prompt),
        negative=d.negative_prompt, frames=d.frames, height=d.height, width=d.width, steps=d.steps,
        guidance=d.guidance_scale, max_text_len=trial.info.max_text_len,
    )  # fmt: skip
    (staging / "README.md").write_text(card)
    return counts


def link_components(root: Path, dst: Path) -> dict[str, int]:
    """model_index.json and every component folder it names but transformer/, into `dst`:
    files hard-linked where `dst` is on the same filesystem, else copied (never symlinked)."""
    index = json.loads((root / "model_index.json").read_text())
    folders = [
        name for name, value in index.items()
        if not name.startswith("_") and name != "transformer" and isinstance(value, list)
        and value and value[0] is not None and (root / name).is_dir()
    ]  # fmt: skip
    counts = {"linked": 0, "copied": 0}
    _place(root / "model_index.json", dst / "model_index.json", counts)
    for folder in folders:
        for here, _dirs, names in os.walk(root / folder, followlinks=True):
            for name in names:
                source = Path(here) / name
                _place(source, dst / source.relative_to(root), counts)
    return counts


def _place(source: Path, target: Path, counts: dict[str, int]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # follows a symlinked source (a hub cache's blobs): the real file
        counts["linked"] += 1
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)
        counts["copied"] += 1
