"""The full-attention base model every trial fine-tunes: pre-trained once, cached by its config.

For a preset, the base is the preset pre-trained with full attention for `base_steps` steps on
the trial's data, saved with save_pretrained under <cache>/<preset>-<hash of the config>. A file
lock serialises concurrent trials on one host (the first trains, the rest wait and load) and the
directory appears by an atomic rename, so nobody ever loads half a model. A local model
directory is the base as is; base_steps 0 means the preset's seeded random initialisation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

from orchestrator.data import StepSampler, build_datasets, collate
from orchestrator.data.cache import file_lock
from orchestrator.models.wan_presets import PRESETS, build_preset, load_local

from .config import TrainConfig, autocast_dtype
from .flow_matching import class_prompts, flow_loss, sample_timesteps

BASE_FORMAT = 1  # bump when the pre-training procedure changes, so old caches are not reused
_BASE_SEED_OFFSET = 104729  # the base's data/noise stream differs from any trial's


def default_cache_dir() -> Path:
    return (
        Path(os.environ.get("SLA_SWEEP_CACHE", "~/.cache/sla-sweep")).expanduser() / "base_models"
    )


def base_model_id(train: TrainConfig, mixed_precision: str) -> str:
    """A stable name of the base model a trial starts from."""
    if train.model not in PRESETS:
        return f"local:{Path(train.model).expanduser().resolve()}"
    if train.base_steps == 0:
        return f"{train.model}-init-seed{train.data_seed}"
    key = {
        "format": BASE_FORMAT,
        "preset": train.model,
        "transformer": PRESETS[train.model].transformer_config(),
        "data": {  # what the base trains on (not num_val; frames/size resolved against the preset)
            "source": train.data.source,
            "num_train": train.data.num_train,
            "frames": train.clip_shape[0],
            "size": train.clip_shape[1],
        },
        "seed": train.data_seed,
        "steps": train.base_steps,
        "lr": train.base_lr,
        "batch_size": train.batch_size,
        "timestep_sampling": train.timestep_sampling,
        "timestep_shift": train.flow_shift,
        "mixed_precision": mixed_precision,
    }
    if train.data.source != "digits":  # the user's clips: a changed folder means another base
        key["data_files"] = folder_fingerprint(Path(train.data.source).expanduser())
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{train.model}-{digest}"


def load_base_model(
    train: TrainConfig,
    *,
    device: torch.device,
    mixed_precision: str,
    log: Callable[[str], None] = print,
) -> tuple[WanTransformer3DModel, str]:
    """(model in float32 on the CPU, its base id); pre-trains and caches a preset's base if needed.

    The base trains on the trial's own clip shape (train.clip_shape) in `mixed_precision` (resolved).
    """
    base_id = base_model_id(train, mixed_precision)
    if train.model not in PRESETS:
        return load_local(train.model), base_id
    if train.base_steps == 0:
        return build_preset(train.model, seed=train.data_seed), base_id
    cache = Path(train.base_cache_dir).expanduser() if train.base_cache_dir else default_cache_dir()
    final = cache / base_id
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f"{base_id}.lock"):
        if not (final / "config.json").is_file():
            log(
                f"pre-training base model {base_id} ({train.base_steps} steps, full attention) into {cache}"
            )
            model = _pretrain(train, device=device, mixed_precision=mixed_precision, log=log)
            tmp = cache / f".{base_id}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, safe_serialization=True)
            os.replace(tmp, final)
    return WanTransformer3DModel.from_pretrained(final, local_files_only=True), base_id


def folder_fingerprint(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file under a data folder, sorted."""
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    )


def _pretrain(
    train: TrainConfig,
    *,
    device: torch.device,
    mixed_precision: str,
    log: Callable[[str], None],
) -> WanTransformer3DModel:
    """A plain single-process full-attention flow-matching loop from the preset's init."""
    preset = PRESETS[train.model]
    seed = train.data_seed + _BASE_SEED_OFFSET
    frames, size = train.clip_shape
    dataset, _ = build_datasets(
        train.data.source,
        channels=preset.in_channels,
        frames=frames,
        size=size,
        num_train=train.data.num_train,
        num_val=train.data.num_val,
        seed=train.data_seed,
    )
    model = build_preset(train.model, seed=train.data_seed).to(device).train()
    if train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    prompts = class_prompts(preset.text_len, preset.text_dim)
    sampler = StepSampler(
        len(dataset), batch_size=train.batch_size, grad_accum=1, world_size=1, seed=seed
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.base_lr, weight_decay=0.0)
    warmup = max(1, train.base_steps // 10)
    dtype = autocast_dtype(mixed_precision)
    scaler = torch.amp.GradScaler(
        device.type, enabled=dtype is torch.float16
    )  # a no-op unless fp16
    start = time.perf_counter()
    for step in range(train.base_steps):
        for group in optimizer.param_groups:
            group["lr"] = train.base_lr * min(1.0, (step + 1) / warmup)
        clips, labels = collate(dataset, sampler.indices(step, 0, 0))
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        noise = torch.randn(clips.shape, generator=generator)
        t = sample_timesteps(
            clips.shape[0],
            generator=generator,
            sampling=train.timestep_sampling,
            shift=train.flow_shift,
        )
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = flow_loss(
                model, clips.to(device), noise.to(device), t.to(device), prompts[labels].to(device)
            )
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % max(1, train.base_steps // 5) == 0:
            log(
                f"base step {step + 1}/{train.base_steps}  loss {loss.item():.4f}  {time.perf_counter() - start:.1f}s"
            )
    return model.cpu()
