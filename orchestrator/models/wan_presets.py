"""Size presets for diffusers' WanTransformer3DModel, or a local diffusers model directory.

PRESETS doubles as the CLI's choices. Every preset keeps attention_head_dim a power of two
(32/64/128: the Triton SLA kernel's requirement) and names the clip shape it is meant for
(tokens per sample = F * H/2 * W/2 with the (1, 2, 2) patch). Nothing is fetched from a hub.

The CLI and the spec checks import this module, so torch, diffusers and models.pipeline (which
loads diffusers) are imported inside the functions that build or check a model (heavy: the CLI
would load them at every start).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if (
    TYPE_CHECKING
):  # torch and diffusers load where a model is built: the CLI and spec checks skip them
    from diffusers import WanTransformer3DModel


@dataclasses.dataclass(frozen=True)
class WanPreset:
    """A model size and the clip shape it is meant for."""

    heads: int
    head_dim: int
    layers: int
    ffn_dim: int
    in_channels: int
    text_dim: int
    freq_dim: int
    frames: int  # F of a clip
    size: int  # H = W of a clip, in latent pixels
    text_len: int  # L of the text context
    note: str

    def transformer_config(self) -> dict[str, Any]:
        """Keyword arguments for WanTransformer3DModel."""
        return {
            "patch_size": (1, 2, 2),
            "num_attention_heads": self.heads,
            "attention_head_dim": self.head_dim,
            "in_channels": self.in_channels,
            "out_channels": self.in_channels,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.layers,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 1024,
        }

    @property
    def tokens(self) -> int:
        return self.frames * (self.size // 2) * (self.size // 2)


PRESETS: dict[str, WanPreset] = {
    "tiny": WanPreset(
        heads=2,
        head_dim=32,
        layers=2,
        ffn_dim=128,
        in_channels=4,
        text_dim=32,
        freq_dim=32,
        frames=4,
        size=16,
        text_len=8,
        note="CPU tests: 256 tokens, a training step well under 1 s",
    ),
    "small": WanPreset(
        heads=4,
        head_dim=32,
        layers=4,
        ffn_dim=512,
        in_channels=4,
        text_dim=64,
        freq_dim=64,
        frames=8,
        size=32,
        text_len=16,
        note="CPU demo / small GPU: 2,048 tokens",
    ),
    "medium": WanPreset(
        heads=8,
        head_dim=64,
        layers=8,
        ffn_dim=2048,
        in_channels=16,
        text_dim=512,
        freq_dim=256,
        frames=16,
        size=64,
        text_len=64,
        note="GPU: 16,384 tokens",
    ),
    "wan-1.3b": WanPreset(
        heads=12,
        head_dim=128,
        layers=30,
        ffn_dim=8960,
        in_channels=16,
        text_dim=4096,
        freq_dim=256,
        frames=32,
        size=64,
        text_len=512,
        note="Wan2.1-1.3B shape on one H200: 32,768 tokens",
    ),
}
PRESETS["wan-1.3b-6l"] = dataclasses.replace(
    PRESETS["wan-1.3b"],
    layers=6,
    note="6 of Wan2.1-1.3B's 30 layers at 32,768 tokens: its per-layer cost, a sweep in minutes",
)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the recipe needs to know about a built model."""

    heads: int
    head_dim: int
    layers: int  # self-attention layers (one per block)
    in_channels: int
    text_dim: int
    patch: tuple[int, int, int]

    @classmethod
    def of(cls, model: WanTransformer3DModel) -> ModelShape:
        c = model.config
        return cls(
            heads=int(c.num_attention_heads),
            head_dim=int(c.attention_head_dim),
            layers=int(c.num_layers),
            in_channels=int(c.in_channels),
            text_dim=int(c.text_dim),
            patch=tuple(int(p) for p in c.patch_size),
        )

    def tokens(self, frames: int, height: int, width: int) -> int:
        pt, ph, pw = self.patch
        return (frames // pt) * (height // ph) * (width // pw)


def is_preset(name: str) -> bool:
    return name in PRESETS


LOCAL_TEXT_LEN = 64  # L of the text context for a local model directory (presets name their own)


def text_len(model: str) -> int:
    """L of the text context the recipe feeds `model` (a preset name or a local directory)."""
    return PRESETS[model].text_len if model in PRESETS else LOCAL_TEXT_LEN


def model_source_error(model: str, *, transformer_only: bool = False) -> str | None:
    """Why `model` is neither a preset, a local Wan pipeline directory nor a local diffusers
    WanTransformer3DModel directory (None if fine). transformer_only: of a pipeline, check the
    transformer's weights alone (what a trial loads; the driver checked every component)."""
    if model in PRESETS:
        return None
    allowed = (
        f"a preset ({', '.join(PRESETS)}), a local diffusers Wan pipeline directory "
        "(model_index.json) or a WanTransformer3DModel directory"
    )
    from orchestrator.models.pipeline import (  # heavy: diffusers (see the module docstring)
        WEIGHT_PARTS,
        PipelineError,
        is_pipeline_dir,
        read_pipeline,
    )

    path = Path(model).expanduser()
    if not path.exists():
        return f"model ({model!r}) must be {allowed}; no such preset and the path does not exist"
    if is_pipeline_dir(path):
        try:
            read_pipeline(path, weights=("transformer",) if transformer_only else WEIGHT_PARTS)
        except PipelineError as exc:
            return f"model ({model!r}): {exc}"
        return None
    config = path / "config.json"
    if not config.is_file():
        return f"model ({model!r}) must be {allowed}; {path} has no config.json"
    try:
        values = json.loads(config.read_text())
        class_name = values.get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        return f"model ({model!r}): {config} is not a readable JSON object ({exc})"
    if class_name != "WanTransformer3DModel":
        return f"model ({model!r}): {config} describes {class_name!r}, expected 'WanTransformer3DModel'"
    from diffusers import WanTransformer3DModel  # heavy (see the module docstring)

    from orchestrator.models.pipeline import weight_problems  # heavy: diffusers

    problems = weight_problems(path, WanTransformer3DModel, values)
    return f"model ({model!r}): {'; '.join(problems)}" if problems else None


def build_preset(name: str, *, seed: int) -> WanTransformer3DModel:
    """A freshly initialised model of a preset; the same seed gives the same weights."""
    if name not in PRESETS:
        raise ValueError(f"model preset ({name!r}) must be one of {', '.join(PRESETS)}")
    import torch  # heavy (see the module docstring)
    from diffusers import WanTransformer3DModel  # heavy

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**PRESETS[name].transformer_config())


def load_local(path: str | Path) -> WanTransformer3DModel:
    """Load a local WanTransformer3DModel directory, or a pipeline's transformer/ (never a hub
    download); a two-expert pipeline's (Wan2.2 A14B) transformer/ and transformer_2/ as one
    ExpertPair (orchestrator.models.experts)."""
    error = model_source_error(str(path), transformer_only=True)
    if error is not None:
        raise ValueError(error)
    from diffusers import WanTransformer3DModel  # heavy (see the module docstring)

    from orchestrator.models import pipeline as p  # heavy: diffusers

    path = Path(path).expanduser()
    if not p.is_pipeline_dir(path):
        return WanTransformer3DModel.from_pretrained(path, local_files_only=True)
    if len(p.pipeline_experts(path)) == 1:
        return WanTransformer3DModel.from_pretrained(
            path, subfolder="transformer", local_files_only=True
        )
    from orchestrator.models.experts import ExpertPair  # imports torch: heavy

    info = p.read_pipeline(path, weights=("transformer",))  # both experts' configs and weights
    experts = [
        WanTransformer3DModel.from_pretrained(path, subfolder=name, local_files_only=True)
        for name in info.experts
    ]
    return ExpertPair(*experts, boundary_ratio=info.boundary_ratio)
