"""The full-attention base model every trial fine-tunes: pre-trained once, cached by its config.

For a preset, the base is the preset pre-trained with full attention for `base_steps` steps on
the trial's data, saved with save_pretrained under <cache>/<preset>-<hash of the config>. A file
lock serialises concurrent trials on one host (the first trains, the rest wait and load) and the
directory appears by an atomic rename, so nobody ever loads half a model. A local model
directory is the base as is; base_steps 0 means the preset's seeded random initialisation.

When the sweep's storage is a bucket, the base is also kept there (<results_dir>/_cache/
base_models/<base id>, named by $SLA_SWEEP_BASE_STORE in the trials' environment): the driver
pre-trains and uploads it, and a trial on another node fetches it into its own cache instead of
pre-training again. Its config.json is uploaded last, so a base without it is incomplete.
"""

from __future__ import annotations

# Imports inside functions: diffusers (seconds to import) only where a model is built or loaded,
# so that the sweep's driver, which only makes sure the base is cached, goes without it.
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from orchestrator.data import StepSampler, build_datasets, collate
from orchestrator.models.wan_presets import PRESETS, build_preset, load_local
from orchestrator.storage import download_dir, open_location
from orchestrator.storage.local import file_lock

from .config import TrainConfig, autocast_dtype
from .flow_matching import class_prompts, flow_loss, sample_timesteps

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel

BASE_STORE_ENV = "SLA_SWEEP_BASE_STORE"  # a URI: the shared copy of pre-trained bases
BASE_STORE_DIR = "_cache/base_models"  # under a bucket's results_dir
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
    store: str | None = None,
) -> tuple[WanTransformer3DModel, str]:
    """(model in float32 on the CPU, its base id); pre-trains and caches a preset's base if needed.

    The base trains on the trial's own clip shape (train.clip_shape) in `mixed_precision` (resolved).
    `store` (default $SLA_SWEEP_BASE_STORE): a URI whose copy is fetched before pre-training and
    which is given the base when it lacks it.
    """
    from diffusers import WanTransformer3DModel  # heavy: only to load the model

    base_id = base_model_id(train, mixed_precision)
    if train.model not in PRESETS:
        return load_local(train.model), base_id
    if train.base_steps == 0:
        return build_preset(train.model, seed=train.data_seed), base_id
    final = ensure_base_model(
        train, device=device, mixed_precision=mixed_precision, log=log, store=store
    )
    return WanTransformer3DModel.from_pretrained(final, local_files_only=True), base_id


def ensure_base_model(
    train: TrainConfig,
    *,
    device: torch.device,
    mixed_precision: str,
    log: Callable[[str], None] = print,
    store: str | None = None,
) -> Path:
    """A preset's pre-trained base in the cache (pre-trained there, or fetched from `store`, when
    missing; given to `store` when it lacks it): its directory. Loads nothing when it is there,
    which is all the sweep's driver needs before its trials start."""
    store = store or os.environ.get(BASE_STORE_ENV) or None
    base_id = base_model_id(train, mixed_precision)
    cache = Path(train.base_cache_dir).expanduser() if train.base_cache_dir else default_cache_dir()
    final = cache / base_id
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f"{base_id}.lock"):
        if not (final / "config.json").is_file() and store:
            _fetch(store, base_id, cache, log)
        if not (final / "config.json").is_file():
            log(
                f"pre-training base model {base_id} ({train.base_steps} steps, full attention) into {cache}"
            )
            model = _pretrain(train, device=device, mixed_precision=mixed_precision, log=log)
            tmp = cache / f".{base_id}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, safe_serialization=True)
            os.replace(tmp, final)
        if store:
            _publish(store, base_id, final, log)
    return final


def _fetch(store: str, base_id: str, cache: Path, log: Callable[[str], None]) -> None:
    """The store's copy of the base into cache/<base_id> (atomic), when the store has it whole."""

    remote = open_location(store, what="the base model store").join(base_id)
    if not remote.join("config.json").is_file():
        return
    tmp = cache / f".{base_id}.fetch-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    count = download_dir(remote, tmp)
    shutil.rmtree(cache / base_id, ignore_errors=True)  # an incomplete one (no config.json)
    os.replace(tmp, cache / base_id)
    log(f"fetched base model {base_id} ({count} files) from {remote.uri}")


def _publish(store: str, base_id: str, final: Path, log: Callable[[str], None]) -> None:
    """Upload cache/<base_id> to the store unless it has it; config.json last (the marker)."""

    remote = open_location(store, what="the base model store").join(base_id)
    if remote.join("config.json").is_file():
        return
    files = sorted(p for p in final.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "config.json"):
        remote.join(path.relative_to(final).as_posix()).write_bytes(path.read_bytes())
    log(f"uploaded base model {base_id} to {remote.uri}")


def folder_fingerprint(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file under a data folder, sorted (a file,
    e.g. a prompt file: itself)."""
    if root.is_file():
        return [(root.name, root.stat().st_size, root.stat().st_mtime_ns)]
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
    seed = train.data_seed + _BASE_SEED_OFFSET
    dataset = _base_dataset(train)
    model = build_preset(train.model, seed=train.data_seed).to(device).train()
    if train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    preset = PRESETS[train.model]
    prompts = class_prompts(preset.text_len, preset.text_dim)
    sampler = StepSampler(
        len(dataset), batch_size=train.batch_size, grad_accum=1, world_size=1, seed=seed
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.base_lr, weight_decay=0.0)
    warmup = max(1, train.base_steps // 10)
    dtype = autocast_dtype(mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)  # no-op unless fp16
    start = time.perf_counter()
    for step in range(train.base_steps):
        for group in optimizer.param_groups:
            group["lr"] = train.base_lr * min(1.0, (step + 1) / warmup)
        clips, noise, t, context = _base_batch(train, dataset, sampler, prompts, seed, step)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = flow_loss(
                model, clips.to(device), noise.to(device), t.to(device), context.to(device)
            )
        _optimizer_step(model, optimizer, scaler, loss)
        if (step + 1) % max(1, train.base_steps // 5) == 0:
            elapsed = time.perf_counter() - start
            log(f"base step {step + 1}/{train.base_steps}  loss {loss.item():.4f}  {elapsed:.1f}s")
    return model.cpu()


def _base_dataset(train: TrainConfig):
    """The trial's training clips (the same data_seed), at the trial's clip shape."""
    frames, size = train.clip_shape
    dataset, _ = build_datasets(
        train.data.source,
        channels=PRESETS[train.model].in_channels,
        frames=frames,
        size=size,
        num_train=train.data.num_train,
        num_val=train.data.num_val,
        seed=train.data_seed,
    )
    return dataset


def _base_batch(
    train: TrainConfig, dataset, sampler: StepSampler, prompts: torch.Tensor, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step `step`'s (clips, noise, timesteps, prompt embeddings), on the CPU; the noise and
    timesteps come from a generator seeded by (seed, step), so a rerun draws the same."""
    clips, labels = collate(dataset, sampler.indices(step, 0, 0))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    noise = torch.randn(clips.shape, generator=generator)
    t = sample_timesteps(
        clips.shape[0],
        generator=generator,
        sampling=train.timestep_sampling,
        shift=train.flow_shift,
    )
    return clips, noise, t, prompts[labels]


def _optimizer_step(model, optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor) -> None:
    """Backward (scaled under fp16), gradient clipping at 1.0, the AdamW step."""
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
