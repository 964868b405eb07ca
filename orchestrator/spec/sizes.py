"""Sizes a machine cannot hold, refused before anything is allocated: an estimate of the memory
one Train worker needs for its model and one batch (the clip shape, batch size and model shape
of a validated TrainConfig) against what this machine (or its GPU) has, and step counts beyond
any sensible run.

The estimate is a lower bound (weights, gradients and AdamW's two moments in float32; per sample
the clips and about 16 hidden-size activations per token and layer, plus the FFN's): a setting
it refuses cannot run; one it passes may still be tight.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from orchestrator.models.wan_presets import PRESETS
from orchestrator.recipe.config import TrainConfig

MAX_STEPS = 10_000_000  # train.steps / train.base_steps: months of steps at any speed
GIB = 1024**3
ACTIVATIONS_PER_TOKEN = 16  # hidden-size activations kept per token and layer for backward


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model: its width, depth, FFN and channels."""

    hidden: int
    layers: int
    ffn: int
    channels: int
    text_dim: int
    patch: tuple[int, int, int] = (1, 2, 2)
    heads: int = 1

    @property
    def params(self) -> int:
        """Roughly: per block self- and cross-attention projections and the FFN; the text
        projection."""
        d = self.hidden
        return self.layers * (8 * d * d + 2 * d * self.ffn) + 2 * self.text_dim * d


def step_errors(train: TrainConfig) -> list[str]:
    return [
        f"train.{key} ({getattr(train, key)}) is beyond any sensible run; at most {MAX_STEPS:,}"
        for key in ("steps", "base_steps")
        if getattr(train, key) > MAX_STEPS
    ]


def memory_errors(train: TrainConfig, *, gpu: bool) -> list[str]:
    """One line when the estimate exceeds what one worker's device has (GPU: this machine's
    first GPU, when the driver has one; CPU: this machine's memory)."""
    shape, tokens, pixels = trial_shape(train)
    if shape is None or tokens <= 0:
        return []
    where, have = _capacity(gpu)
    if have is None:
        return []
    width = 2 if gpu and train.mixed_precision != "no" else 4  # bf16 on a GPU, else float32
    per_layer = ACTIVATIONS_PER_TOKEN * shape.hidden + 2 * shape.ffn
    kept_layers = 1 if train.gradient_checkpointing else shape.layers
    per_sample = tokens * (per_layer * kept_layers + shape.hidden * shape.layers) * width
    per_sample += pixels * 4  # the clip itself, float32
    weights = 16 * shape.params  # float32 weights and gradients, AdamW's two moments
    need = weights + train.batch_size * per_sample
    if need <= have:
        return []
    if weights > have:
        return [
            f"model {train.model!r} has about {shape.params:,} parameters: training them needs "
            f"at least {weights / GIB:,.1f} GiB per worker but {where} has {have / GIB:,.1f} GiB"
        ]
    frames, size = train.clip_shape
    return [
        f"train.batch_size {train.batch_size} x {tokens:,} tokens per clip (data.frames "
        f"{frames or '?'}, data.size {size or list(train.data.hw or [])}) on {train.model!r} "
        f"needs at least {need / GIB:,.1f} GiB per worker but {where} has {have / GIB:,.1f} GiB; "
        "lower train.batch_size, data.size or data.frames, or use a smaller model"
    ]


def trial_shape(train: TrainConfig) -> tuple[Shape | None, int, int]:
    """(model shape, tokens per clip, values per clip) of a trial, (None, 0, 0) when unknown."""
    preset = PRESETS.get(train.model)
    if preset is not None:
        shape = Shape(preset.heads * preset.head_dim, preset.layers, preset.ffn_dim,
                      preset.in_channels, preset.text_dim, heads=preset.heads)  # fmt: skip
        frames, size = train.clip_shape
        pixels = preset.in_channels * frames * size * size
        return shape, frames * (size // 2) * (size // 2), pixels
    shape = _local_shape(Path(train.model))
    if shape is None or not train.data.frames or not train.data.hw:
        return shape, 0, 0
    frames, (height, width) = train.data.frames, train.data.hw
    if train.is_pipeline:
        from orchestrator.models.pipeline import read_pipeline  # imports diffusers: heavy

        info = read_pipeline(train.model)
        frames = (frames - 1) // info.scale_temporal + 1
        height, width = height // info.scale_spatial, width // info.scale_spatial
    pt, ph, pw = shape.patch
    tokens = (frames // pt) * (height // ph) * (width // pw)
    return shape, tokens, shape.channels * frames * height * width


def _local_shape(path: Path) -> Shape | None:
    """A local transformer's (or a pipeline's transformer/) shape from its config.json."""
    for config in (path / "transformer" / "config.json", path / "config.json"):
        try:
            c = json.loads(config.read_text())
            return Shape(
                int(c["num_attention_heads"]) * int(c["attention_head_dim"]),
                int(c["num_layers"]), int(c["ffn_dim"]), int(c["in_channels"]),
                int(c.get("text_dim", 0)), tuple(int(p) for p in c.get("patch_size", (1, 2, 2))),
                int(c["num_attention_heads"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _capacity(gpu: bool) -> tuple[str, int | None]:
    """(what, bytes) one worker can use: the GPU's memory, or this machine's."""
    if gpu:
        import torch  # heavy: the spec check (and so the CLI) runs without it

        if not torch.cuda.is_available():
            return "a GPU", None  # the joined cluster's GPUs are not visible from here
        props = torch.cuda.get_device_properties(0)
        return f"the GPU ({props.name})", int(props.total_memory)
    import psutil  # tens of ms: `import orchestrator.cli` stays without it

    return "this machine", int(psutil.virtual_memory().total)
