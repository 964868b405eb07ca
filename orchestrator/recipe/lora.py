"""LoRA adapters over the frozen base, and the base's identity that lean checkpoints carry.

The adapter goes in through diffusers' peft integration (`model.add_adapter`) before SLA is
injected, and is written in the format diffusers' `load_lora_weights` reads (keys
`transformer.<module>.lora_A.weight`, the peft config in the safetensors metadata):

    pipe = WanPipeline.from_pretrained(BASE); pipe.load_lora_weights(CHECKPOINT_OR_EXPORT)

A checkpoint of a frozen base (LoRA, or train_base false) holds no copy of the base; trial.json
names it instead: its id, where it comes from, and a fingerprint of its files (or, for a preset's
seeded initialisation, of its tensors). A rebuilt base whose fingerprint differs is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from orchestrator.data.cache import FileDigests, tensor_digest
from orchestrator.models.experts import ExpertPair
from orchestrator.models.wan_presets import PRESETS
from orchestrator.models.weights import weight_files
from orchestrator.storage.local import default_cache_root

from .config import LoraConfig, TrainConfig

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default weight name
PREFIX = "transformer."  # WanPipeline's component prefix in LoRA files
ADAPTER = "default"  # the adapter's name inside the model


class LoraStateError(ValueError):
    """A LoRA file that is unreadable or does not fit the model or the trial (one line)."""


def add_lora(model: nn.Module, lora: LoraConfig) -> None:
    """Wrap the target linears of `model` with a trainable adapter; the rest is frozen."""
    model.add_adapter(lora.to_peft(), adapter_name=ADAPTER)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter's parameters (lora_A and lora_B of every adapted linear)."""
    return [p for name, p in model.named_parameters() if f".lora_A.{ADAPTER}." in name
            or f".lora_B.{ADAPTER}." in name]  # fmt: skip


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors with the keys of a diffusers LoRA file (without the prefix)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


def save_lora(
    model: nn.Module, directory: Path, *, states: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write directory/pytorch_lora_weights.safetensors (WanPipeline.save_lora_weights); a
    sharded model's adapter as `states` (its tensors gathered whole: parallel.full_states)."""
    from diffusers import WanPipeline

    config = model.peft_config[ADAPTER].to_dict()
    WanPipeline.save_lora_weights(
        directory, transformer_lora_layers=lora_state(model) if states is None else states,
        weight_name=LORA_FILE,
        transformer_lora_adapter_metadata=config,
    )  # fmt: skip
    return Path(directory) / LORA_FILE


def read_lora(path: Path, *, rank: int) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors, prefix removed; LoraStateError when unreadable or of another rank."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise LoraStateError(f"{path}: not a readable LoRA file ({exc})") from None
    state = {k.removeprefix(PREFIX): v for k, v in tensors.items()}
    ranks = {int(v.shape[0]) for k, v in state.items() if ".lora_A." in k}
    if not ranks:
        raise LoraStateError(f"{path}: no lora_A tensors (not a LoRA file)")
    if ranks != {rank}:
        found = ", ".join(map(str, sorted(ranks)))
        raise LoraStateError(
            f"{path}: the adapter's rank ({found}) differs from the trial's lora.rank ({rank})"
        )
    return state


def load_lora(model: nn.Module, path: Path, *, rank: int) -> None:
    """Load a LoRA file into the model's adapter, every tensor (LoraStateError otherwise)."""
    from peft import set_peft_model_state_dict

    state = read_lora(path, rank=rank)
    expected = set(lora_state(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise LoraStateError(
            f"{path}: the adapter does not fit the model (missing {missing[:2] or 'none'}, "
            f"unexpected {unexpected[:2] or 'none'})"
        )
    set_peft_model_state_dict(model, state, adapter_name=ADAPTER)


# ---- the frozen base's identity ---------------------------------------------------------------
def base_identity(
    train: TrainConfig, base_id: str, model: nn.Module, *, mixed_precision: str
) -> dict[str, Any]:
    """What a lean checkpoint records of its base (before any adapter or SLA goes in)."""
    directory = base_directory(train, base_id)
    return {
        "id": base_id,
        "path": None if directory is None else str(directory),
        "mixed_precision": mixed_precision,
        "fingerprint": base_fingerprint(directory, model),
    }


def base_directory(train: TrainConfig, base_id: str) -> Path | None:
    """The base's weight files: a local or pipeline transformer, a preset's cached pre-trained
    base; None for a preset's seeded initialisation (base_steps 0)."""
    if train.model not in PRESETS:
        root = Path(train.model).expanduser().resolve()
        return root / "transformer" if train.is_pipeline else root
    if train.base_steps == 0:
        return None
    # base_model imports diffusers: heavy, and LoRA specs are checked by the CLI
    from .base_model import default_cache_dir

    cache = Path(train.base_cache_dir).expanduser() if train.base_cache_dir else default_cache_dir()
    return (cache / base_id).resolve()


def base_files(directory: Path) -> list[Path]:
    """The files of the base that from_pretrained reads: config.json, a weight index and the
    weight files it names (or the standard ones); nothing else in the folder, at no depth."""
    return [directory / "config.json", *sorted(directory.glob("*.index.json")),
            *weight_files(directory)]  # fmt: skip


def base_fingerprint(directory: Path | None, model: nn.Module) -> str:
    """sha256 of the base's loaded files (memoised by path, size, mtime, ctime and inode), else
    of its tensors."""
    if directory is None:
        return "tensors:" + tensor_digest(model.state_dict())
    digests = FileDigests(default_cache_root() / "digests.json")
    if isinstance(model, ExpertPair):  # a Wan2.2 A14B pipeline: both experts' files
        second = directory.parent / "transformer_2"
        files = [*base_files(directory), *base_files(second)]
        return "loaded:" + digests.of_files(directory.parent, files)
    return "loaded:" + digests.of_files(directory, base_files(directory))


def legacy_fingerprint(directory: Path) -> str:
    """The fingerprint lean checkpoints recorded before "loaded:": every *.json, *.safetensors
    and *.bin under the folder at any depth (so their checkpoints still resume and infer)."""
    digests = FileDigests(default_cache_root() / "digests.json")
    return "files:" + digests.of_tree(directory, ("*.json", "*.safetensors", "*.bin"))


def check_base(saved: dict[str, Any], running: dict[str, Any], where: Path) -> None:
    """LoraStateError (one line, both fingerprints) when the base is not the checkpoint's."""
    now = running["fingerprint"]
    if str(saved.get("fingerprint")).startswith("files:") and running.get("path"):
        now = legacy_fingerprint(Path(running["path"]))  # a checkpoint of before "loaded:"
    if saved.get("fingerprint") != now:
        raise LoraStateError(
            f"{where}: the base model's files changed since training (fingerprint "
            f"{saved.get('fingerprint')} in trial.json, {running['fingerprint']} now, "
            f"{running['path'] or running['id']}); the checkpoint holds no copy of its base"
        )


def has_lora(model: nn.Module) -> bool:
    """Whether diffusers' peft integration put an adapter into the model."""
    return bool(getattr(model, "peft_config", None))


def detach_lora(model: nn.Module, directory: Path, *, merge: bool) -> Path | None:
    """Take the adapter out of the model for an export: merged into the base's weights (`merge`;
    returns None), or written to directory/pytorch_lora_weights.safetensors (returned) with the
    base left as it was. Either way the model's linears are plain again."""
    if merge:
        model.fuse_lora(lora_scale=1.0)
        model.unload_lora()
        return None
    path = save_lora(model, directory)
    model.unload_lora()
    return path


def load_exported_lora(model: nn.Module, directory: Path) -> bool:
    """Load an export's adapter the stock diffusers way, when it has one; whether it had."""
    if not (Path(directory) / LORA_FILE).is_file():
        return False
    model.load_lora_adapter(str(directory), weight_name=LORA_FILE, prefix="transformer")
    return True
