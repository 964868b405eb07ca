"""TrainConfig's checks that span several fields and are not about the model itself: what a
sharded (fsdp) trial does not support, a pipeline's clip shape against its VAE and patch, and the
training objective against the data (a prompt file needs distill and a pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.models.wan_presets import PRESETS
from orchestrator.values import is_positive_int

# Each check takes the TrainConfig being validated (typed Any: config.py imports this module).


def objective_errors(c: Any) -> list[str]:
    """A prompt file as data.source: readable prompts, a pipeline (its text encoder encodes them,
    its transformer generates the latents) and objective distill; flow_weight needs distill."""
    errors = []
    source = getattr(c.data, "source", None)
    prompts = isinstance(source, str) and source != "digits" and Path(source).expanduser().is_file()
    if c.flow_weight not in (0, 0.0) and c.objective == "distill" and prompts:
        errors.append(
            f"train.flow_weight ({c.flow_weight}) needs clips; data.source is a prompt file "
            "(generated latents): set flow_weight 0"
        )
    elif c.flow_weight not in (0, 0.0) and c.objective != "distill":
        errors.append(
            f"train.flow_weight ({c.flow_weight}) weighs the flow-matching loss beside the "
            "teacher's: it needs objective distill"
        )
    if not prompts:
        return errors
    # orchestrator.data's package imports torch: only a spec with a prompt file pays for it
    from orchestrator.data.prompts import PromptFileError, read_prompts

    try:
        read_prompts(c.data.source)
    except PromptFileError as exc:
        errors.append(str(exc))
    if isinstance(c.model, str) and (c.model in PRESETS or not c.is_pipeline):
        errors.append(
            f"data.source ({c.data.source}) is a prompt file: prompts need a pipeline model with "
            f"a text encoder (a directory with model_index.json); model {c.model!r} has none"
        )
    if c.objective != "distill":
        errors.append(
            f"data.source ({c.data.source}) is a prompt file, which needs objective distill "
            f"(objective {c.objective} trains on clips); set train.objective distill or give a "
            "folder of clips"
        )
    return errors


def parallel_errors(c: Any) -> list[str]:
    """What a sharded (fsdp) trial does not support yet: each refused with the way out."""
    if c.parallel != "fsdp":
        return []
    unsupported = {
        "mixed_precision fp16": c.mixed_precision == "fp16",  # FSDP2 needs a sharded scaler
        "objective distill": c.objective == "distill",  # the teacher's copy is not sharded
    }
    return [
        f"parallel (fsdp) does not support {what} yet; use parallel ddp or drop it"
        for what, given in unsupported.items()
        if given
    ]


def shape_errors(c: Any) -> list[str]:
    """A pipeline's clip shape against its VAE and patch; a preset's size is one even int."""
    pair = isinstance(c.data.size, tuple)
    if c.model in PRESETS or not c.is_pipeline:
        return (
            [f"data.size ({list(c.data.size)}) as [H, W] needs a pipeline model; give one int"]
            if pair
            else []
        )
    if not (is_positive_int(c.data.frames) and c.data.hw and all(map(is_positive_int, c.data.hw))):
        return []  # DataConfig reports the values themselves
    names = ("data.frames", "data.size", "data.size")
    from orchestrator.models.pipeline import read_pipeline  # imports torch: see flow_shift

    return read_pipeline(c.model, weights=("transformer",)).size_errors(
        c.data.frames, *c.data.hw, names=names
    )
