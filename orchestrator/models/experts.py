"""Wan2.2 A14B's two experts as one module: `transformer` denoises the high-noise timesteps,
`transformer_2` the low-noise ones, switching where WanPipeline does (t >= boundary_ratio * 1000
goes to `transformer`).

ExpertPair is what a trial of a two-expert pipeline trains, validates and checkpoints in place of
one WanTransformer3DModel. Its children are named as the pipeline's folders, so its state dict's
keys are `transformer.<...>` and `transformer_2.<...>`, SLA's layer paths in sla_attention.pt are
`transformer.blocks.0.attn1` and `transformer_2.blocks.0.attn1`, and `save_pretrained(out)`
writes out/transformer/ and out/transformer_2/ as a pipeline directory has them. Its forward
takes WanTransformer3DModel's arguments and sends each sample to the expert of its timestep, so
the sampler, the losses and SLA's injection see one model.

Which experts a trial fine-tunes (`train.experts`): `both`, `high_noise` (transformer) or
`low_noise` (transformer_2). A trained expert gets SLA and trains only on the timesteps it serves
(`expert_timesteps`); an expert not trained keeps its base weights and dense attention.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sla_kernel_glue.diffusers_processors import is_diffusers_attention

EXPERT_NAMES = ("transformer", "transformer_2")
EXPERT_CHOICES = {  # train.experts -> the experts it fine-tunes
    "both": EXPERT_NAMES,
    "high_noise": ("transformer",),
    "low_noise": ("transformer_2",),
}
TIMESTEP_SCALE = 1000.0  # WanPipeline's num_train_timesteps: boundary_ratio * 1000


class ExpertPair(nn.Module):
    """Two WanTransformer3DModels of one shape; each sample goes to its timestep's expert."""

    def __init__(self, transformer: nn.Module, transformer_2: nn.Module, boundary_ratio: float):
        super().__init__()
        if not 0 < boundary_ratio < 1:
            raise ValueError(f"boundary_ratio ({boundary_ratio!r}) must be between 0 and 1")
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.boundary_ratio = float(boundary_ratio)

    @property
    def config(self) -> Any:
        """The high-noise expert's config (both have the same shapes: read_pipeline checks)."""
        return self.transformer.config

    @property
    def _repeated_blocks(self) -> list[str]:  # what compile_blocks compiles
        return list(getattr(self.transformer, "_repeated_blocks", []))

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def experts(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in EXPERT_NAMES}

    def enable_gradient_checkpointing(self) -> None:
        for expert in self.experts().values():
            expert.enable_gradient_checkpointing()

    def save_pretrained(self, out: str | Path, **kwargs: Any) -> None:
        """out/transformer/ and out/transformer_2/, each a diffusers model folder."""
        for name, expert in self.experts().items():
            expert.save_pretrained(Path(out) / name, **kwargs)

    def high_noise(self, timestep: torch.Tensor) -> torch.Tensor:
        """Which samples `transformer` serves: timestep (on WanPipeline's 0-1000 scale) at or
        above the boundary."""
        return timestep >= self.boundary_ratio * TIMESTEP_SCALE

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> Any:
        """WanTransformer3DModel's forward, each sample by its timestep's expert (a batch on one
        side of the boundary calls one expert, as every training step does)."""
        high = self.high_noise(timestep.reshape(timestep.shape[0], -1)[:, 0])
        if bool(high.all()) or bool((~high).all()):
            expert = self.transformer if bool(high[0]) else self.transformer_2
            return expert(hidden_states, timestep, **kwargs)
        if kwargs.get("return_dict", True):
            raise ValueError("a batch across the experts' boundary needs return_dict=False")
        out = torch.empty_like(hidden_states, dtype=torch.float32)
        for mask, expert in ((high, self.transformer), (~high, self.transformer_2)):
            part = {k: _rows(v, mask) for k, v in kwargs.items()}
            result = expert(hidden_states[mask], timestep[mask], **part)[0]
            out = out.to(result.dtype) if out.dtype != result.dtype else out
            out[mask] = result
        return (out,)


def expert_modules(model: nn.Module) -> list[nn.Module]:
    """The transformers a pipeline calls: both experts of an ExpertPair, else the model itself."""
    return list(model.experts().values()) if isinstance(model, ExpertPair) else [model]


def pipeline_parts(model: nn.Module) -> dict[str, nn.Module]:
    """WanPipeline's keyword arguments for a trial's model: transformer (and transformer_2)."""
    return model.experts() if isinstance(model, ExpertPair) else {"transformer": model}


def _rows(value: Any, mask: torch.Tensor) -> Any:
    """A per-sample tensor argument's rows of `mask`; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == mask.shape[0]:
        return value[mask]
    return value


def experts_of(index: dict[str, Any]) -> tuple[str, ...]:
    """The transformers a model_index.json names: ("transformer",) or, with a non-null
    transformer_2 (Wan2.2 A14B), both."""
    second = index.get("transformer_2")
    if isinstance(second, list) and any(second):
        return EXPERT_NAMES
    return ("transformer",)


def pipeline_experts(path: str | Path) -> tuple[str, ...]:
    """The transformers a pipeline directory's model_index.json names (unreadable:
    ("transformer",), and read_pipeline says why)."""
    try:
        index = json.loads((Path(path).expanduser() / "model_index.json").read_text())
        return experts_of(index)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return ("transformer",)


def trained_experts(choice: str) -> tuple[str, ...]:
    """The experts `train.experts` fine-tunes; ValueError for an unknown choice."""
    if choice not in EXPERT_CHOICES:
        raise ValueError(f"experts ({choice!r}) must be one of {', '.join(EXPERT_CHOICES)}")
    return EXPERT_CHOICES[choice]


def sla_targets(model: nn.Module, choice: str) -> Any:
    """apply_sla's `targets` for a model: None (its default layers) for one transformer; for a
    pair, the default layers of the experts `choice` trains (a predicate on the layer path)."""
    if not isinstance(model, ExpertPair):
        return None
    prefixes = tuple(f"{name}." for name in trained_experts(choice))
    return lambda path, module: (
        path.startswith(prefixes)
        and is_diffusers_attention(module)
        and not getattr(module, "is_cross_attention", False)
    )


def freeze_untrained(model: nn.Module, choice: str) -> int:
    """requires_grad off on the experts `choice` does not train; returns their parameter count."""
    if not isinstance(model, ExpertPair):
        return 0
    trained = trained_experts(choice)
    frozen = 0
    for name, expert in model.experts().items():
        if name not in trained:
            for p in expert.parameters():
                p.requires_grad_(False)
                frozen += p.numel()
    return frozen


def expert_errors(model: str, *, is_pipeline: bool, experts: str, lora: bool) -> list[str]:
    """train.experts needs a two-expert pipeline; LoRA on two experts is not supported yet."""
    two = False
    if is_pipeline:
        two = len(pipeline_experts(model)) == 2
    if not two and experts != "both":
        return [
            f"experts ({experts!r}) chooses between a Wan2.2 A14B pipeline's two experts;"
            f" model {model!r} has one transformer: drop experts"
        ]
    if two and lora:
        return [
            "lora on a two-expert pipeline (transformer and transformer_2) is not supported yet;"
            " fine-tune the experts fully (train_base true) or pick a one-transformer pipeline"
        ]
    return []
