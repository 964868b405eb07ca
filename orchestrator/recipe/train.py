"""One trial: fine-tune the full-attention base with SLA (or dense, the control) under accelerate.

Reads top to bottom: construct (validate) -> setup (one method per component) -> train (a flat
loop) -> cleanup. `run_trial` is the entry point; Ray, MLflow and printing live in the callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed

from orchestrator.data import StepSampler, build_datasets, collate
from orchestrator.models.wan_presets import PRESETS, ModelShape
from sla_kernel_glue import SLAConfig

from . import evaluate as ev
from .base_model import folder_fingerprint, load_base_model
from .base_outputs import base_reference
from .callbacks import Callback, PrintCallback
from .checkpoint import (
    VALIDATION_DIR,
    FrozenBase,
    checkpoint_dir,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from .compile import compiled_blocks
from .config import TrainConfig, resolve_mixed_precision
from .flow_matching import class_prompts, flow_loss, sample_timesteps
from .lora import add_lora, base_identity, lora_parameters


class TrialRecipe:
    """Fine-tunes one model with one SLA config (None: the full-attention control)."""

    # ---- construct -------------------------------------------------------------------------
    def __init__(
        self,
        train: TrainConfig,
        sla: SLAConfig | None,
        workdir: Path,
        *,
        callback: Callback | None = None,
        resume_from: Path | None = None,
        reference_cache: Path | None = None,
        encoded: Path | None = None,
    ) -> None:
        if not isinstance(train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(train).__name__}")
        self.sla = None if sla is None else SLAConfig.parse(sla)
        if self.sla is None and not train.train_base and train.lora is None:
            raise ValueError(
                "train_base (False) with sla None and no lora trains nothing: enable one of them"
            )
        schedule = self.sla.topk_schedule if self.sla is not None else None
        if schedule is not None and schedule.warmup_steps > train.steps:
            raise ValueError(
                f"sla.topk_schedule.warmup_steps ({schedule.warmup_steps}) is more than "
                f"train.steps ({train.steps}): training would stop at topk "
                f"{self.sla.topk_at(train.steps):.4g}, short of the end ({schedule.end}) that "
                "inference runs at; lower warmup_steps or raise steps"
            )
        self.train_cfg = train
        self.workdir = Path(workdir)
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.reference_cache = None if reference_cache is None else Path(reference_cache)
        self.callback = callback
        self.encoded = None if encoded is None else Path(encoded)  # a pipeline's manifest
        self.mixed_precision = resolve_mixed_precision(
            train.mixed_precision, cuda=torch.cuda.is_available()
        )
        self.shift = train.flow_shift  # the timestep shift (a pipeline's scheduler's by default)
        self.handle: Any = None
        self.frozen: FrozenBase | None = None  # set up for LoRA or train_base false
        self.start_step = 0
        self._compile_scope = (
            contextlib.ExitStack()
        )  # compiled blocks and their Inductor settings, until cleanup

    # ---- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        self._setup_accelerator()
        self._setup_data()
        self._setup_model()
        self._setup_reference()
        self._setup_validation()
        self._setup_lora()
        self._setup_sla()
        self._setup_compile()
        self._setup_optimizer()
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.frozen is not None:
            self.frozen.register(self.accelerator)
        self._setup_resume()

    def _setup_accelerator(self) -> None:
        cfg = self.train_cfg
        # cpu=True without CUDA: accelerate only forms a multi-process (gloo) group on CPUs when told.
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=self.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
        )
        set_seed(cfg.seed)
        if self.callback is None:
            self.callback = PrintCallback(cfg.steps, is_main=self.accelerator.is_main_process)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _setup_data(self) -> None:
        cfg = self.train_cfg
        if cfg.is_pipeline:
            self._setup_encoded_data()
        else:
            self._setup_pixel_data()
        self.sampler = StepSampler(
            len(self.train_set),
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            world_size=self.accelerator.num_processes,
            seed=cfg.seed,
        )

    def _setup_encoded_data(self) -> None:
        """A pipeline's clips and captions, encoded before the trials (here, when run alone)."""
        from orchestrator.data.encoded import CaptionTable, EncodedClips, read_manifest

        from .pipeline_data import prepare_encoded

        if self.encoded is None:
            log = print if self.accelerator.is_main_process else (lambda _msg: None)
            with self.accelerator.main_process_first():
                self.encoded = prepare_encoded(
                    self.train_cfg, device=self.accelerator.device, log=log
                )
        self.manifest = read_manifest(self.encoded)
        self.train_set = EncodedClips(self.manifest, "train")
        self.val_set = EncodedClips(self.manifest, "val")
        self.train_prompts = CaptionTable.of_split(self.manifest, "train")
        self.val_prompts = CaptionTable.of_split(self.manifest, "val")
        self.channels = int(self.manifest["latent_shape"][0])
        self.clip_shape = tuple(self.manifest["latent_shape"][1:])

    def _setup_pixel_data(self) -> None:
        cfg, data = self.train_cfg, self.train_cfg.data
        preset = PRESETS.get(cfg.model)
        frames, size = self.clip_shape = cfg.clip_shape  # 0: unused (a folder's clips)
        self.channels = preset.in_channels if preset else _local_in_channels(cfg.model)
        self.train_set, self.val_set = build_datasets(
            data.source,
            channels=self.channels,
            frames=frames,
            size=size,
            num_train=data.num_train,
            num_val=data.num_val,
            seed=cfg.data_seed,
        )

    def _setup_model(self) -> None:
        cfg, acc = self.train_cfg, self.accelerator
        log = print if acc.is_main_process else (lambda _msg: None)
        model, self.base_id = load_base_model(
            cfg, device=acc.device, mixed_precision=self.mixed_precision, log=log
        )
        self.model = model.to(acc.device)
        self.shape = ModelShape.of(model)
        _, f, h, w = self.train_set[0][0].shape
        self.tokens = self.shape.tokens(f, h, w)
        if not cfg.is_pipeline:  # one fixed random "prompt" per digit class
            self.train_prompts = self.val_prompts = class_prompts(cfg.text_len, self.shape.text_dim)
        self.n_params = sum(p.numel() for p in model.parameters())
        if cfg.frozen_base:  # checkpoints name this base instead of copying it
            identity = base_identity(cfg, self.base_id, model, mixed_precision=self.mixed_precision)
            self.frozen = FrozenBase(self.model, identity, lora=cfg.lora is not None)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()

    def _setup_reference(self) -> None:
        """The full-attention base on the fixed val batch: its loss and its samples, computed once
        (once per sweep with a reference_cache: every trial starts from the same base)."""
        cfg = self.train_cfg
        self.val = ev.make_val_batch(
            self.val_set, self.val_prompts, seed=cfg.seed, device=self.accelerator.device
        )
        common = {"batch_size": cfg.batch_size, "autocast": self.accelerator.autocast}

        def compute() -> tuple[float, torch.Tensor]:
            loss = ev.val_loss(self.model, self.val, **common)
            sampler = {"steps": cfg.sample_steps, "shift": self.shift}
            return loss, ev.samples(self.model, self.val, **sampler, **common)

        self.model.eval()
        reference = base_reference(self.reference_cache, self._reference_key(), compute)
        self.model.train()
        self.base_val_loss = reference.val_loss
        self.base_samples = reference.samples.to(self.accelerator.device)
        self.reference_cached = reference.cached

    def _setup_validation(self) -> None:
        """A pipeline's validation videos: the fixed prompts and noise, and the base's videos
        (before SLA goes in: the untouched base), computed once per sweep."""
        self.videos, self.base_videos = None, None
        cfg = self.train_cfg
        if not (cfg.is_pipeline and cfg.validation.prompts):
            return
        from .validation import VideoValidation

        self.videos = VideoValidation(
            cfg.validation, self.manifest, frames=int(cfg.data.frames), size=cfg.data.hw,
            shift=self.shift, device=self.accelerator.device, autocast=self.accelerator.autocast,
        )  # fmt: skip
        if self.accelerator.is_main_process:
            directory = None if self.reference_cache is None else self.reference_cache / "videos"
            self.model.eval()
            self.base_videos = self.videos.base_videos(self.model, self.base_id, directory)
            self.model.train()

    def _reference_key(self) -> dict[str, Any]:
        """What the base's val loss and samples depend on: the base, the val batch, the sampler,
        the precision and the device type."""
        cfg = self.train_cfg
        key = {
            "base_model": self.base_id, "model": cfg.model, "data": dataclasses.asdict(cfg.data),
            "clip_shape": self.clip_shape, "channels": self.channels, "seed": cfg.seed,
            "batch_size": cfg.batch_size, "sample_steps": cfg.sample_steps,
            "timestep_shift": self.shift, "mixed_precision": self.mixed_precision,
            "device": self.accelerator.device.type,
        }  # fmt: skip
        if cfg.model not in PRESETS:  # a local model directory: its files, not just its path
            key["model_files"] = folder_fingerprint(Path(cfg.model).expanduser())
        if cfg.data.source != "digits":
            key["data_files"] = folder_fingerprint(Path(cfg.data.source).expanduser())
        if cfg.is_pipeline:  # what the val batch is: the encoded clips and captions
            key["encoded_val"] = self.manifest["val"]
        return key

    def _setup_lora(self) -> None:
        """The adapter goes in after the base's references (it starts as the identity anyway)
        and before SLA, so SLA's processors call the adapted projections."""
        if self.train_cfg.lora is not None:
            add_lora(self.model, self.train_cfg.lora)

    def _setup_sla(self) -> None:
        if self.sla is not None:  # before prepare: DDP and the optimizer must see every proj_l
            from sla_kernel_glue import apply_sla

            self.handle = apply_sla(self.model, self.sla)
        if self.train_cfg.frozen_base:
            # SLA's own trainable weights (proj_l; frozen for sparse-only, linear_scope "none")
            # and the adapter's: nothing else trains.
            layers = self.handle.layers.values() if self.handle is not None else ()
            trainable = {id(p) for layer in layers for p in layer.parameters() if p.requires_grad}
            if self.train_cfg.lora is not None:
                trainable |= {id(p) for p in lora_parameters(self.model)}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in trainable)

    def _setup_compile(self) -> None:
        """torch.compile every transformer block (after SLA injection, before DDP wraps the model),
        under Inductor settings that hold until cleanup, which also restores the blocks' forwards."""
        if not self.train_cfg.compile:
            return
        blocks = self._compile_scope.enter_context(compiled_blocks(self.model))
        if self.accelerator.is_main_process:
            print(f"[recipe] torch.compile: {blocks} blocks (compiled at the first step)")

    def _setup_optimizer(self) -> None:
        cfg = self.train_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "nothing to train: train_base is false, there is no lora and SLA has no "
                "trainable weights (linear_scope 'none' freezes proj_l); set train_base true"
            )
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _setup_resume(self) -> None:
        self.resumed_metrics: dict[str, float] = {}
        if self.resume_from is not None:
            trial = load_checkpoint(
                self.accelerator,
                self.handle,
                self.resume_from,
                sla=self.sla,
                base_model=self.base_id,
                frozen=self.frozen,
            )
            self.start_step = trial["step"]
            # Reports before the next evaluation carry the checkpoint's eval metrics (as a straight run's do).
            self.resumed_metrics = dict(trial.get("metrics") or {})

    # ---- train -----------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        cfg, acc = self.train_cfg, self.accelerator
        metrics: dict[str, float] = dict(self.resumed_metrics)
        if self.start_step == 0:
            self._set_step(0)
            metrics = {**self.evaluate(), **self._step_metrics(0)}
            self.callback.on_metrics(0, metrics)
        losses: list[torch.Tensor] = []
        window_start, window_steps = self._now(), 0
        for step in range(self.start_step, cfg.steps):
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(step)
            self._set_step(step + 1)  # a topk schedule's value once this step is done
            step_losses = []
            for micro in range(cfg.grad_accum):
                with acc.accumulate(self.model):
                    clips, context, noise, t = self._micro_batch(step, micro)
                    loss = flow_loss(self.model, clips, noise, t, context)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                step_losses.append(loss.detach())
            losses.append(torch.stack(step_losses).mean())
            window_steps += 1
            done = step + 1
            log_now = done % cfg.log_every == 0 or done == cfg.steps
            eval_now = (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps
            video_now = self.videos is not None and (
                done == cfg.steps or (cfg.validation.every and done % cfg.validation.every == 0)
            )
            ckpt_now = (
                (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                or done == cfg.steps
                or video_now  # validation videos travel in their checkpoint
            )
            if not (log_now or eval_now or ckpt_now):
                continue
            step_s = (self._now() - window_start) / window_steps
            metrics = {**metrics, **self._train_metrics(losses, step_s), **self._step_metrics(done)}
            if eval_now or ckpt_now:
                metrics.update(self.evaluate())
            if ckpt_now:
                self._checkpoint(
                    done, metrics, videos=self._validate_videos(metrics) if video_now else None
                )
            else:
                self.callback.on_metrics(done, dict(metrics))
            losses, window_start, window_steps = [], self._now(), 0
        return metrics

    def _checkpoint(self, done: int, metrics: dict[str, float], videos=None) -> None:
        """Save, add the validation videos (main process), report, then prune old checkpoints."""
        cfg, acc = self.train_cfg, self.accelerator
        directory = save_checkpoint(
            acc,
            self.handle,
            checkpoint_dir(self.workdir, done),
            step=done,
            sla=self.sla,
            metrics=metrics,
            base_model=self.base_id,
            train=cfg.to_dict(),
            frozen=self.frozen,
        )
        if videos is not None and acc.is_main_process:
            from .validation import write_videos

            fps = cfg.data.fps or DEFAULT_VIDEO_FPS
            write_videos(videos, directory / VALIDATION_DIR, fps=fps)
            write_videos(self.base_videos, directory / VALIDATION_DIR, fps=fps, prefix="base_")
        acc.wait_for_everyone()
        self.callback.on_checkpoint(done, directory, dict(metrics))
        if cfg.keep_checkpoints:  # after the callback: it may have copied the directory
            acc.wait_for_everyone()
            prune_checkpoints(self.workdir, cfg.keep_checkpoints, protect=self.resume_from)

    def _validate_videos(self, metrics: dict[str, float]):
        """The trial's validation videos (main process), their scores against the base's in
        `metrics`; None on the other processes."""
        if not self.accelerator.is_main_process:
            return None
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        videos, cost = self.videos.decode(self.videos.generate(model))
        model.train()
        metrics.update(self.videos.score(videos, self.base_videos))
        metrics.update(cost)
        return videos

    def _micro_batch(self, step: int, micro: int) -> tuple[torch.Tensor, ...]:
        """Clips, context, noise and timesteps: a pure function of (seed, step, micro, rank)."""
        cfg, acc = self.train_cfg, self.accelerator
        stream = [cfg.seed, step, micro, acc.process_index]
        # Encoded clips draw their latents from the VAE posterior, on a stream of their own.
        draws = torch.Generator().manual_seed(
            int(np.random.SeedSequence([*stream, 1]).generate_state(1)[0])
        )
        clips, labels = collate(
            self.train_set, self.sampler.indices(step, micro, acc.process_index), draws
        )
        seed = np.random.SeedSequence(stream).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(clips.shape, generator=generator)
        t = sample_timesteps(
            clips.shape[0],
            generator=generator,
            sampling=cfg.timestep_sampling,
            shift=self.shift,
        )
        device = acc.device
        return (
            clips.to(device),
            self.train_prompts[labels].to(device),
            noise.to(device),
            t.to(device),
        )

    def _lr(self, step: int) -> float:
        cfg = self.train_cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
            return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.lr

    def _set_step(self, done: int) -> None:
        """SLA layers at the topk of `done` optimizer steps: the training step that makes them
        `done` runs at it, and so does the evaluation reported at `done`."""
        if self.handle is not None and self.sla.topk_schedule is not None:
            self.handle.set_step(done)

    def _step_metrics(self, done: int) -> dict[str, float]:
        """FLOPs of the step that made `done` steps, at its topk, and (SLA) that topk."""
        flops = ev.step_flops(
            self.shape,
            batch=self._global_batch(),
            tokens=self.tokens,
            sla=self.sla,
            n_params=self.n_params,
            step=done,
        )
        return flops if self.handle is None else {**flops, "sla/topk": self.handle.topk}

    def _now(self) -> float:
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        return time.perf_counter()

    def _global_batch(self) -> int:
        return (
            self.train_cfg.batch_size * self.train_cfg.grad_accum * self.accelerator.num_processes
        )

    def _train_metrics(self, losses: list[torch.Tensor], step_s: float) -> dict[str, float]:
        loss = self.accelerator.reduce(torch.stack(losses).mean(), reduction="mean")
        return {
            "train/loss": float(loss),
            "train/lr": float(self.optimizer.param_groups[0]["lr"]),
            "perf/step_s": step_s,
            "perf/tokens_per_s": self._global_batch() * self.tokens / step_s,
        }

    def evaluate(self) -> dict[str, float]:
        """Quality against the full-attention base on the fixed val batch, and fallbacks (at the
        topk the SLA layers run at now)."""
        cfg = self.train_cfg
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        common = {"batch_size": cfg.batch_size, "autocast": self.accelerator.autocast}
        loss = ev.val_loss(model, self.val, **common)
        layers = self.handle.layers if self.handle is not None else {}
        rel_err = ev.attention_rel_err(model, layers, self.val, **common)
        samples = ev.samples(model, self.val, steps=cfg.sample_steps, shift=self.shift, **common)
        model.train()
        fallbacks = self.handle.fallback_counts() if self.handle is not None else {}
        # The handle counts from this process's start; a resumed run adds the checkpoint's totals,
        # so the counts are the trial's whatever restarts it went through.
        carried = self.resumed_metrics
        return {
            "val/loss": loss,
            "val/loss_gap": loss - self.base_val_loss,
            "val/attn_rel_err": rel_err,
            "val/sample_psnr": ev.psnr(samples, self.base_samples),
            "sla/fallback_calls": carried.get("sla/fallback_calls", 0.0)
            + float(self.handle.total_fallbacks() if self.handle is not None else 0),
            "sla/self_attn_fallback_calls": carried.get("sla/self_attn_fallback_calls", 0.0)
            + float(
                sum(
                    n
                    for per in fallbacks.values()
                    for reason, n in per.items()
                    if reason != "cross_attention"
                )
            ),
        }

    # ---- cleanup ---------------------------------------------------------------------------
    def cleanup(self) -> None:
        self._compile_scope.close()
        acc = getattr(self, "accelerator", None)
        if acc is None:
            return
        acc.wait_for_everyone()
        acc.end_training()
        acc.free_memory()
        # Let the next trial in this process pick its own mixed precision (private API, no public reset).
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()


def _local_in_channels(path: str) -> int:
    import json

    return int(json.loads((Path(path).expanduser() / "config.json").read_text())["in_channels"])


DEFAULT_VIDEO_FPS = 16.0  # of validation MP4s when data.fps does not say (Wan2.1 makes 16 fps)


def run_trial(
    train: TrainConfig, sla: SLAConfig | None, workdir: Path, **options: Any
) -> dict[str, float]:
    """Run one trial to completion and return its final metrics.

    sla None is the full-attention control. Checkpoints go to workdir/checkpoint_NNNNNN. Options
    (TrialRecipe's keywords): callback gets metrics and checkpoints on every rank (default:
    progress lines on the main process); resume_from: a checkpoint to continue from;
    reference_cache: a directory shared by the trials of a sweep, where the base's val loss,
    samples and validation videos are computed once and then loaded; encoded: a pipeline's
    manifest of encoded clips and captions (default: encoded here first).
    """
    recipe = TrialRecipe(train, sla, workdir, **options)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()
