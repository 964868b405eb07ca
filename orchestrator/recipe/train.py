"""One trial: fine-tune the full-attention base with SLA (or dense, the control) under accelerate.

Reads top to bottom: construct (validate) -> setup (one method per component, in
trial_setup.py) -> train (a flat loop) -> cleanup. `run_trial` is the entry point; Ray, MLflow
and printing live in the callback.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.state import AcceleratorState, GradientState

from orchestrator.data import collate
from sla_kernel_glue import SLAConfig

from . import evaluate as ev
from .callbacks import Callback
from .checkpoint import (
    VALIDATION_DIR,
    FrozenBase,
    checkpoint_dir,
    prune_checkpoints,
    save_checkpoint,
)
from .config import TrainConfig, resolve_mixed_precision
from .distill import objective_loss
from .topk_schedule import schedule_error
from .trial_setup import TrialSetup
from .validation import write_videos


class TrialRecipe(TrialSetup):
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
        if sla is not None and not isinstance(sla, SLAConfig):
            raise TypeError(
                f"sla must be an SLAConfig or None, got {type(sla).__name__}; build one with "
                "SLAConfig.parse(...)"
            )
        self.sla = sla
        if self.sla is None and not train.train_base and train.lora is None:
            raise ValueError(
                "train_base (False) with sla None and no lora trains nothing: enable one of them"
            )
        error = schedule_error(None if sla is None else sla.topk_schedule, train.steps)
        if error is not None:
            raise ValueError(error)
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
            for group in self.optimizer.param_groups:  # lr_scale: SLA's learned parts
                group["lr"] = self._lr(step) * group.get("lr_scale", 1.0)
            self._set_step(step + 1)  # a topk schedule's value once this step is done
            step_losses = []
            for micro in range(cfg.grad_accum):
                with acc.accumulate(self.model):
                    clips, context, noise, t = self._micro_batch(step, micro)
                    loss = objective_loss(
                        self.model, clips, noise, t, context,
                        teacher=self.teacher, flow_weight=cfg.flow_weight,
                    )  # fmt: skip
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
        started = self._now()
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
            sharded=self.sharded,
        )
        if videos is not None and acc.is_main_process:
            fps = cfg.data.fps or DEFAULT_VIDEO_FPS
            write_videos(videos, directory / VALIDATION_DIR, fps=fps)
            write_videos(self.base_videos, directory / VALIDATION_DIR, fps=fps, prefix="base_")
        acc.wait_for_everyone()
        # what a checkpoint costs this trial (the save on this rank; Ray's copy comes after)
        metrics["perf/checkpoint_s"] = self._now() - started
        metrics["perf/checkpoint_bytes"] = float(_tree_bytes(directory))
        metrics.update(_peak_gpu_metrics())
        self.callback.on_checkpoint(done, directory, dict(metrics))
        if cfg.keep_checkpoints:  # after the callback: it may have copied the directory
            acc.wait_for_everyone()
            prune_checkpoints(self.workdir, cfg.keep_checkpoints, protect=self.resume_from)

    def _validate_videos(self, metrics: dict[str, float]):
        """The trial's validation videos (main process), their scores against the base's in
        `metrics`; None on the other processes. A sharded model generates on every process
        (each forward gathers its blocks from all of them); only the main one decodes."""
        main = self.accelerator.is_main_process
        if not (main or self.sharded is not None):
            return None
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        started = self._now()
        generated = self.videos.generate(model)
        generate_s = self._now() - started
        if not main:
            model.train()
            return None
        videos, cost = self.videos.decode(generated)
        model.train()
        cost = {**cost, "perf/validation_generate_s": generate_s}
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
        t = self.timesteps.draw(clips.shape[0], generator, step, micro)
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
        loss, distill = ev.val_losses(model, self.val, self.val_teacher, **common)
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
            "val/distill_loss": distill,  # to the dense base's velocity, fixed noise and t
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


def _tree_bytes(directory: Path) -> int:
    """The bytes of every file under directory (symbolic links not followed)."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def _peak_gpu_metrics() -> dict[str, float]:
    """The peak GPU memory this process allocated so far (MiB; nothing without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    return {"perf/peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}


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
