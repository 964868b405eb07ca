"""How a trial's processes hold the model: replicated (ddp) or sharded (fsdp, FSDP2).

ddp: accelerate wraps the model in DistributedDataParallel; every process holds all of it.

fsdp (with more than one process): `torch.distributed.fsdp.fully_shard` on each transformer
block, then on the root (patch embedding, condition embedder, output head). Each process keeps
1/N of every parameter, in float32 (the master weights the optimizer steps); a block's parameters
are all-gathered just before it runs and freed after. With train.mixed_precision bf16 they are
gathered as bf16 and gradients are reduce-scattered in float32
(`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=float32)`); accelerate's autocast still
wraps the forward, so the ops it keeps in float32 (norms, softmax) stay float32 as under ddp.
Activation checkpointing per block is the model's own (train.gradient_checkpointing).

SLA's proj_l is sharded with its block, under the block's policy. It lives inside the block's
attention module, so it travels in the block's one all-gather and one reduce-scatter (no
collective of its own, no second gradient path to keep in step); its stored and optimised
weights stay float32; its compute dtype is what it is under ddp anyway (SLA casts proj_l to the
dtype of q, k, v, which is bf16 under bf16 autocast). Kept replicated instead, its gradients
would need a hand-written all-reduce outside FSDP.

Checkpoints of a sharded trial: the model and optimizer state through torch.distributed.checkpoint
(every rank writes its shards under `sharded/`), accelerate's state for the rest (RNG), and a
whole sla_attention.pt gathered from the shards (SLA_FILE, written by rank 0).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn

from orchestrator.models.experts import ExpertPair

from .checkpoint_weights import SHARDED_DIR, SafeLoadPlanner, ShardReader


def is_sharded(parallel: str, accelerator: Accelerator) -> bool:
    """Whether this trial shards its model: fsdp over more than one process."""
    return parallel == "fsdp" and accelerator.num_processes > 1


def mixed_precision_policy(mixed_precision: str):
    """FSDP2's policy for a resolved precision: bf16 gathers with float32 reduction, or float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mixed_precision == "bf16":
        # Inputs are left as they come: accelerate's autocast casts per op, as under ddp (a
        # blanket cast would round the timesteps and rotary tables to bf16).
        return MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
    if mixed_precision == "no":
        return MixedPrecisionPolicy()
    raise ValueError(f"parallel fsdp takes mixed_precision bf16 or no, got {mixed_precision!r}")


def shard_model(model: nn.Module, *, mixed_precision: str) -> int:
    """fully_shard each transformer block, then each transformer (both experts of an ExpertPair,
    then the pair), in place (the parameters become DTensors: build the optimizer after this).
    Returns the number of sharded blocks."""
    from torch.distributed.fsdp import fully_shard

    experts = list(model.experts().values()) if isinstance(model, ExpertPair) else [model]
    for expert in experts:
        blocks = getattr(expert, "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or not len(blocks):
            raise ValueError(
                f"{type(expert).__name__} has no transformer blocks (model.blocks) to shard"
            )
    policy = mixed_precision_policy(mixed_precision)
    for p in model.parameters():  # float32 master weights whatever the base was stored in
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    count = 0
    for expert in experts:
        for block in expert.blocks:
            fully_shard(block, mp_policy=policy)
            count += 1
        if expert is not model:
            fully_shard(expert, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return count


def prepare_sharded(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[nn.Module, AcceleratedOptimizer]:
    """accelerate's part for a sharded model: its autocast forward (no DDP: FSDP2 reduces the
    gradients) and gradient accumulation's optimizer; the model and optimizer state stay out of
    save_state / load_state (save_sharded and load_sharded write and read them)."""
    model = accelerator.prepare_model(model, evaluation_mode=True)  # autocast, no DDP wrapper
    accelerator.register_save_state_pre_hook(lambda _models, weights, _dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, _dir: models.clear())
    # Not in accelerator._optimizers: save_state would torch.save rank 0's shards as the whole.
    return model, AcceleratedOptimizer(optimizer, device_placement=False, scaler=accelerator.scaler)


@dataclasses.dataclass
class ShardedState:
    """A sharded trial's model and optimizer: what its checkpoints write through
    torch.distributed.checkpoint instead of accelerate's save_state. `frozen`: a frozen base
    (LoRA, train_base false), whose checkpoints hold only what trains (adapter, proj_l)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None  # None until the optimizer over the shards is made
    frozen: bool = False

    def save(self, directory: Path) -> None:
        save_sharded(self.model, self.optimizer, directory, frozen=self.frozen)

    def load(self, directory: Path) -> None:
        load_sharded(self.model, self.optimizer, directory, frozen=self.frozen)


def _options(frozen: bool):
    """Leave a frozen base's parameters out; loading then sets only what is there (the base's
    own come from its files)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen)


def _states(model: nn.Module, optimizer: torch.optim.Optimizer, frozen: bool) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, _inner(optimizer), options=_options(frozen))
    return {"model": model_state, "optim": optim_state}


def save_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path, *, frozen: bool = False
) -> None:
    """Every rank writes its shards of the model and optimizer state to directory/sharded (a
    frozen base's parameters left out when `frozen`: the base is named, not copied)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_states(model, optimizer, frozen), checkpoint_id=str(Path(directory) / SHARDED_DIR))


def load_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path, *, frozen: bool = False
) -> None:
    """Every rank reads its shards of directory/sharded into the sharded model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(directory) / SHARDED_DIR
    if not path.is_dir():
        raise ValueError(
            f"cannot resume from {directory}: no {SHARDED_DIR}/ (a sharded trial's model and "
            "optimizer state); it was written by a parallel ddp trial"
        )
    states = _states(model, optimizer, frozen)
    dcp.load(states, storage_reader=ShardReader(str(path)), planner=SafeLoadPlanner())
    set_state_dict(
        model,
        _inner(optimizer),
        model_state_dict=states["model"],
        optim_state_dict=states["optim"],
        options=_options(frozen),
    )


def full_states(states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a state dict whole, on the CPU, gathered from their shards (every rank must
    call it; each gets the whole tensors)."""
    from torch.distributed.tensor import DTensor

    return {
        name: (v.full_tensor() if isinstance(v, DTensor) else v).detach().to("cpu", copy=True)
        for name, v in states.items()
    }


def full_sla_states(handle: Any) -> dict[str, dict[str, torch.Tensor]]:
    """{layer path: {name: whole tensor}} of the SLA layers, gathered from their shards (every
    rank must call it)."""
    return {path: full_states(layer.state_dict()) for path, layer in handle.layers.items()}


def local_numel(model: nn.Module) -> int:
    """Parameter elements this process holds (its shards of a sharded model's parameters)."""
    from torch.distributed.tensor import DTensor

    return sum(
        p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters()
    )


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer
