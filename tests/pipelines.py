"""Tiny Wan pipelines for tests: built once per session and variant, and damaged copies of them.

    @pytest.fixture(scope="session")
    def wan21(tmp_path_factory):
        return tiny_pipeline(tmp_path_factory.mktemp("pipelines"))

The pipeline `tiny_pipeline` returns is shared by every test of the session: never modify it;
`break_pipeline` and `edit_json` work on copies.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

from orchestrator.models.tiny_pipeline import WAN22_VAE_LAYOUT, build_tiny_pipeline

_BUILT: dict[tuple[str, int], Path] = {}  # (variant, seed) -> the session's pipeline


def tiny_pipeline(tmp_dir: str | Path, variant: str = "wan2.1", *, seed: int = 0) -> Path:
    """The session's tiny pipeline of `variant`, built under `tmp_dir` on first use."""
    key = (variant, seed)
    if key not in _BUILT or not _BUILT[key].is_dir():
        out = Path(tmp_dir) / f"tiny-{variant}-seed{seed}"
        _BUILT[key] = out if out.is_dir() else build_tiny_pipeline(out, variant=variant, seed=seed)
    return _BUILT[key]


def generate(
    pipe: WanPipeline, prompts: str | list[str], *, max_text_len: int, **kwargs: Any
) -> Any:
    """WanPipeline's output for a short clip: 9 frames of 64x64 in 2 steps from seed 0, unless
    `kwargs` say otherwise. Prompts are padded to `max_text_len` (the pipeline's max_text_len)."""
    settings = {
        "num_frames": 9,
        "height": 64,
        "width": 64,
        "num_inference_steps": 2,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "pt",
        **kwargs,
    }
    return pipe(prompts, max_sequence_length=max_text_len, **settings).frames


def edit_json(path: str | Path, **changes: Any) -> None:
    """Set keys of a JSON config file; a value of None deletes the key."""
    path = Path(path)
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2))


def _remove(relative: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        target = root / relative
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()

    return damage


def _remove_weights(component: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        for weights in (root / component).glob("*.safetensors"):
            weights.unlink()

    return damage


def _missing_shard(root: Path) -> None:
    """transformer/ as a two-shard checkpoint whose second shard is gone."""
    folder = root / "transformer"
    (folder / "diffusion_pytorch_model.safetensors").rename(
        folder / "diffusion_pytorch_model-00001-of-00002.safetensors"
    )
    weight_map = {
        "a.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
        "b.weight": "diffusion_pytorch_model-00002-of-00002.safetensors",
    }
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _bad_in_channels(root: Path) -> None:
    config = json.loads((root / "vae" / "config.json").read_text())
    edit_json(root / "transformer" / "config.json", in_channels=config["z_dim"] + 1)


_PARTS = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
DAMAGES: dict[str, Callable[[Path], None]] = {
    **{f"no-{part}": _remove(part) for part in _PARTS},
    "no-model_index": _remove("model_index.json"),
    "bad-model_index": lambda root: (root / "model_index.json").write_text("{not json"),
    "no-vae-config": _remove("vae/config.json"),
    "no-transformer-weights": _remove_weights("transformer"),
    "missing-shard": _missing_shard,
    "no-tokenizer-file": _remove("tokenizer/tokenizer.json"),
    "vae-class": lambda root: edit_json(root / "vae" / "config.json", _class_name="AutoencoderKL"),
    "in_channels": _bad_in_channels,
    "text_dim": lambda root: edit_json(root / "transformer" / "config.json", text_dim=48),
    "scheduler-class": lambda root: edit_json(
        root / "scheduler" / "scheduler_config.json", _class_name="DDIMScheduler"
    ),
    "no-flow-sigmas": lambda root: edit_json(
        root / "scheduler" / "scheduler_config.json", use_flow_sigmas=False
    ),
}


def break_pipeline(src: str | Path, dst: str | Path, what: str | Iterable[str]) -> Path:
    """A copy of pipeline `src` at `dst` with the damages `what` (names in DAMAGES) applied."""
    names = [what] if isinstance(what, str) else list(what)
    unknown = [n for n in names if n not in DAMAGES]
    if unknown:
        raise ValueError(f"unknown damage {unknown}; choose from {', '.join(DAMAGES)}")
    dst = Path(dst)
    shutil.copytree(src, dst)
    for name in names:
        DAMAGES[name](dst)
    return dst


_WAN_LAYOUTS: dict[str, dict[str, dict[str, Any]]] = {  # the parts of the released configs we read
    "Wan2.1-T2V-1.3B": {
        "model_index.json": {"expand_timesteps": False},
        "vae/config.json": {"base_dim": 96, "z_dim": 16},  # no scale_factor_*: the defaults hold
        "transformer/config.json": {"num_attention_heads": 12, "in_channels": 16},
        "scheduler/scheduler_config.json": {"flow_shift": 3.0},
    },
    "Wan2.2-TI2V-5B": {
        "model_index.json": {"expand_timesteps": True},
        "vae/config.json": {
            "base_dim": 160,
            "decoder_base_dim": 256,
            "z_dim": 48,
            **WAN22_VAE_LAYOUT,
            "latents_mean": [0.0] * 48,
            "latents_std": [1.0] * 48,
        },
        "transformer/config.json": {"num_attention_heads": 24, "in_channels": 48},
        "scheduler/scheduler_config.json": {"flow_shift": 5.0},
    },
}


def wan_config_layout(dst: str | Path, release: str) -> Path:
    """A directory with the configs of a released Wan Diffusers pipeline (`release` in
    _WAN_LAYOUTS) and empty weight files: the text encoder sharded, the tokenizer a
    sentencepiece model, as the Wan-AI repositories have them. For read_pipeline only."""
    root = Path(dst)
    layout = _WAN_LAYOUTS[release]
    z_dim = layout["vae/config.json"]["z_dim"]
    components = {
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    shards = [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]
    files: dict[str, Any] = {
        "model_index.json": {"_class_name": "WanPipeline", "boundary_ratio": None, **components},
        "vae/config.json": {"_class_name": "AutoencoderKLWan", "dim_mult": [1, 2, 4, 4]},
        "transformer/config.json": {
            "_class_name": "WanTransformer3DModel",
            "attention_head_dim": 128,
            "out_channels": z_dim,
            "patch_size": [1, 2, 2],
            "text_dim": 4096,
        },
        "text_encoder/config.json": {
            "architectures": ["UMT5EncoderModel"],
            "model_type": "umt5",
            "d_model": 4096,
        },
        "tokenizer/tokenizer_config.json": {"model_max_length": 1000000000000000019884624838656},
        "scheduler/scheduler_config.json": {
            "_class_name": "UniPCMultistepScheduler",
            "prediction_type": "flow_prediction",
            "use_flow_sigmas": True,
        },
    }
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**content, **layout.get(relative, {})}, indent=2))
    (root / "tokenizer" / "spiece.model").touch()
    for part, cls in (("transformer", WanTransformer3DModel), ("vae", AutoencoderKLWan)):
        config = json.loads((root / part / "config.json").read_text())
        with torch.device("meta"):
            state = cls.from_config(config).state_dict()
        shapes = {name: tuple(t.shape) for name, t in state.items()}
        write_header_only(root / part / "diffusion_pytorch_model.safetensors", shapes)
    # the encoder's tensors as UMT5EncoderModel has them (shared.weight once: the tied
    # encoder.embed_tokens.weight is not saved), spread over the shards the index names
    from transformers import UMT5Config, UMT5EncoderModel

    config = json.loads((root / "text_encoder" / "config.json").read_text())
    with torch.device("meta"):
        state = UMT5EncoderModel(UMT5Config(**config)).state_dict()
    names = [n for n in state if n != "encoder.embed_tokens.weight"]
    weight_map = {name: shards[i % len(shards)] for i, name in enumerate(names)}
    for shard in shards:
        held = {n: tuple(state[n].shape) for n, s in weight_map.items() if s == shard}
        write_header_only(root / "text_encoder" / shard, held)
    index = {"metadata": {}, "weight_map": weight_map}
    (root / "text_encoder" / "model.safetensors.index.json").write_text(json.dumps(index))
    return root


def write_header_only(path: str | Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A complete float32 safetensors file of tensors of `shapes` whose data was never written: a
    sparse file (no disk blocks) of the length its header gives, so header checks pass."""
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return Path(path)
