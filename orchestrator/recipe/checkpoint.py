"""Checkpoint directories: accelerate state + sla_attention.pt + trial.json, and resuming them.

<workdir>/checkpoint_NNNNNN/
  accelerate state (model incl. SLA proj_l, optimizer, RNG), written by every rank
  sla_attention.pt   (rank 0; absent for the full-attention control)
  trial.json         (rank 0: step, SLA config or null, metrics, base model id, train config)
  sharded/           (a sharded trial: its model and optimizer, torch.distributed.checkpoint)

A frozen base (LoRA, or train_base false) gets a lean checkpoint: the accelerate state without
the model's weights (optimizer of the trainable parameters, RNG), the adapter as
pytorch_lora_weights.safetensors (LoRA; diffusers' load_lora_weights reads it), sla_attention.pt,
and in trial.json "base": the base's id, path and fingerprint instead of a copy of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn

from orchestrator.models.weights import WeightsError, load_weights_only
from sla_kernel_glue import SLAConfig, load_sla_state, save_sla_state

from .checkpoint_weights import SHARDED_DIR
from .config import VALIDATION_DIR  # noqa: F401 (the recipe's name for it)
from .lora import LORA_FILE, check_base, load_lora, lora_state, save_lora
from .parallel import ShardedState, full_sla_states, full_states

TRIAL_FILE = "trial.json"
SLA_FILE = "sla_attention.pt"
LEAN = "lean"  # trial.json's "checkpoint" of a frozen base's checkpoint


@dataclasses.dataclass
class FrozenBase:
    """What a frozen base's checkpoints hold instead of the model's weights."""

    model: nn.Module  # the unwrapped model: its adapter is saved and loaded
    identity: dict[str, Any]  # the base's id, path, mixed precision and fingerprint
    lora: bool  # whether the model carries a LoRA adapter

    def register(self, accelerator: Accelerator) -> None:
        """Keep the model's weights out of accelerate's save_state and load_state (the optimizer,
        scheduler and RNG state still go through accelerate)."""
        accelerator.register_save_state_pre_hook(lambda _models, weights, _dir: weights.clear())
        accelerator.register_load_state_pre_hook(lambda models, _dir: models.clear())


def checkpoint_dir(workdir: Path, step: int) -> Path:
    return Path(workdir) / f"checkpoint_{step:06d}"


def save_checkpoint(
    accelerator: Accelerator,
    handle: Any,
    directory: Path,
    *,
    step: int,
    sla: SLAConfig | None,
    metrics: dict[str, float],
    base_model: str,
    train: dict[str, Any],
    frozen: FrozenBase | None = None,
    sharded: ShardedState | None = None,
) -> Path:
    """Write one checkpoint directory; every rank must call this (save_state is collective).
    With `frozen` (registered on the accelerator) it is lean: see the module docstring. With
    `sharded` the model and optimizer go to sharded/ through torch.distributed.checkpoint."""
    directory = Path(directory)
    if accelerator.is_main_process and directory.exists():
        shutil.rmtree(directory)  # a stale one from an interrupted earlier run of this trial
    accelerator.wait_for_everyone()
    accelerator.save_state(str(directory))
    sla_states = lora_states = None
    if sharded is not None:
        sharded.save(directory)
        if handle is not None:  # collective: every rank gathers proj_l whole
            sla_states = full_sla_states(handle)
        if frozen is not None and frozen.lora:  # and the adapter
            lora_states = full_states(lora_state(frozen.model))
    if accelerator.is_main_process:
        if handle is not None:
            save_sla_state(handle, directory, states=sla_states)
        trial = {
            "step": step,
            "sla": sla.to_dict() if sla is not None else None,
            "metrics": metrics,
            "base_model": base_model,
            "train": train,
        }
        if frozen is not None:
            if frozen.lora:
                save_lora(frozen.model, directory, states=lora_states)
            trial.update(checkpoint=LEAN, base=frozen.identity)
        tmp = directory / (TRIAL_FILE + ".tmp")
        tmp.write_text(json.dumps(trial, indent=2, sort_keys=True, default=str))
        tmp.replace(
            directory / TRIAL_FILE
        )  # trial.json appears last: its presence marks completion
    accelerator.wait_for_everyone()
    return directory


def prune_checkpoints(workdir: Path, keep: int, *, protect: Path | None = None) -> list[Path]:
    """Delete all but the `keep` newest checkpoint_NNNNNN directories of workdir (never `protect`)."""
    found = sorted(Path(workdir).glob("checkpoint_[0-9][0-9][0-9][0-9][0-9][0-9]"))
    protect = protect.resolve() if protect is not None else None
    doomed = [d for d in found[: max(0, len(found) - keep)] if d.resolve() != protect]
    for directory in doomed:
        shutil.rmtree(directory, ignore_errors=True)  # ranks sharing a workdir may race here
    return doomed


def latest_checkpoint(path: Path) -> Path | None:
    """path itself when it holds trial.json, else its latest complete checkpoint_* directory."""
    if (path / TRIAL_FILE).is_file():
        return path
    found = sorted(p for p in path.glob("checkpoint_*") if (p / TRIAL_FILE).is_file())
    return found[-1] if found else None


def read_trial(directory: Path) -> dict[str, Any]:
    """trial.json of a checkpoint directory, checked for the keys resume needs."""
    directory = Path(directory)
    path = directory / TRIAL_FILE
    if not directory.is_dir():
        raise ValueError(
            f"resume_from ({str(directory)!r}) is not a checkpoint directory (it does not exist)"
        )
    if not path.is_file():
        raise ValueError(
            f"resume_from ({str(directory)!r}) has no {TRIAL_FILE}: not a complete checkpoint directory"
        )
    try:
        trial = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc
    step = trial.get("step") if isinstance(trial, dict) else None
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"{path}: 'step' ({step!r}) must be a non-negative integer")
    check_files(directory)
    return trial


def check_files(directory: Path) -> None:
    """A checkpoint's files as they must be before anything reads them: its own regular files
    (a symbolic link is never followed, wherever it points) and safetensors files whose header
    reads, torch .bin files that load weights-only (memory-mapped, never unpickling code); a
    ValueError naming the first file that is not."""
    from safetensors import SafetensorError, safe_open

    for root, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            path = Path(root) / name
            if path.is_symlink():
                raise ValueError(
                    f"{path} is a symbolic link (to {os.readlink(path)}), not a file of the "
                    "checkpoint; links are not followed"
                )
            if name.endswith(".safetensors"):
                try:
                    with safe_open(str(path), framework="pt"):
                        pass
                except (SafetensorError, OSError) as exc:
                    raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
            elif name.endswith(".bin"):  # accelerate's torch files (optimizer, scheduler, weights)
                try:
                    load_weights_only(path)
                except WeightsError as exc:
                    raise ValueError(str(exc)) from None


def load_checkpoint(
    accelerator: Accelerator,
    handle: Any,
    directory: Path,
    *,
    sla: SLAConfig | None,
    base_model: str,
    frozen: FrozenBase | None = None,
    sharded: ShardedState | None = None,
) -> dict[str, Any]:
    """Restore a prepared run from a checkpoint directory; returns its trial.json (step, metrics).

    Call after accelerator.prepare. The SLA settings and the base model must match the run's; a
    lean checkpoint resumes only a frozen-base run (`frozen`), of a base with its fingerprint.
    A sharded run (`sharded`) reads its model, proj_l included, and optimizer from sharded/.
    """
    directory = Path(directory)
    trial = read_trial(directory)
    saved_sla = trial.get("sla")
    running = sla.to_dict() if sla is not None else None
    problems = []
    if saved_sla != running:
        problems.append(f"its SLA config {saved_sla} differs from this run's {running}")
    if trial.get("base_model") != base_model:
        problems.append(
            f"its base model {trial.get('base_model')!r} differs from this run's {base_model!r}"
        )
    lean = trial.get("checkpoint") == LEAN
    if lean != (frozen is not None):
        saved = "a frozen base's (lean)" if lean else "a full fine-tune's"
        running = "a frozen-base run (LoRA or train_base false)" if frozen else "a full fine-tune"
        problems.append(f"it is {saved} checkpoint and this run is {running}")
    layout = _layout_problem(directory, sharded is not None)
    if layout:
        problems.append(layout)
    if problems:
        raise ValueError(f"cannot resume from {directory}: " + "; ".join(problems))
    if frozen is not None:
        check_base(trial.get("base") or {}, frozen.identity, directory)
        if frozen.lora and sharded is None:  # a sharded run's adapter is in sharded/
            rank = int(((trial.get("train") or {}).get("lora") or {}).get("rank", 0))
            load_lora(frozen.model, directory / LORA_FILE, rank=rank)
    accelerator.load_state(str(directory))
    if sharded is not None:
        sharded.load(directory)
    elif handle is not None:
        load_sla_state(handle, directory)
    return trial


def _layout_problem(directory: Path, run_sharded: bool) -> str | None:
    """Why a checkpoint cannot resume a run that holds its model the other way (sharded or
    whole), or None when both hold it alike."""
    saved_sharded = (Path(directory) / SHARDED_DIR).is_dir()
    if saved_sharded == run_sharded:
        return None
    if saved_sharded:
        return (
            f"it is a sharded checkpoint (train.parallel fsdp: model and optimizer in {SHARDED_DIR}/) "
            "and this run holds the whole model (train.parallel ddp, or fsdp on one worker); "
            "resume it with train.parallel fsdp on as many workers"
        )
    return (
        "it is a whole-model checkpoint (train.parallel ddp, or fsdp on one worker) and this run "
        "shards its model (train.parallel fsdp); resume it with train.parallel ddp"
    )
