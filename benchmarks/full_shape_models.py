"""The pieces of benchmarks.full_shape: the shapes (Wan2.1-T2V-1.3B's full one and a tiny one for
the CPU), the three random-weight models built from their configs, timing and memory helpers."""

from __future__ import annotations

# Imports inside functions: the orchestrator and SLA modules load only in the phases that
# build them (benchmarks.full_shape runs one phase per process).
import argparse
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Shape:
    """The three models' configs and the clip they run on."""

    name: str
    transformer: dict[str, Any]  # WanTransformer3DModel keyword arguments
    vae: dict[str, Any]  # AutoencoderKLWan keyword arguments
    text_encoder: dict[str, Any]  # UMT5Config keyword arguments
    frames: int
    height: int
    width: int
    text_len: int  # prompts are padded to this many tokens
    caption_tokens: int  # tokens of the caption before the padding
    blk: int  # SLA's blkq and blkk
    lora_rank: int

    @property
    def latent(self) -> tuple[int, int, int, int]:
        """(z_dim, F', H', W') with Wan2.1's 4x8x8 compression."""
        return (self.vae["z_dim"], (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8)

    @property
    def tokens(self) -> int:
        _, f, h, w = self.latent
        return f * (h // 2) * (w // 2)  # the (1, 2, 2) patch


FULL = Shape(
    name="wan2.1-t2v-1.3b",
    transformer={  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
        "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128,
        "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
        "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
        "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
    },
    vae={  # vae/config.json (latents_mean / latents_std: AutoencoderKLWan's defaults, Wan2.1's)
        "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0,
    },
    text_encoder={  # text_encoder/config.json (google/umt5-xxl's encoder)
        "vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
        "num_heads": 64, "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new", "tie_word_embeddings": False, "dropout_rate": 0.0,
        "layer_norm_epsilon": 1e-6, "pad_token_id": 0, "eos_token_id": 1,
    },
    frames=81, height=480, width=832, text_len=512, caption_tokens=64, blk=64, lora_rank=16,
)  # fmt: skip

TINY = Shape(
    name="tiny",
    transformer={  # the tiny preset (2 layers, 2 heads x 32)
        "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 32,
        "in_channels": 4, "out_channels": 4, "text_dim": 32, "freq_dim": 32, "ffn_dim": 128,
        "num_layers": 2, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 1024,
    },
    vae={"base_dim": 8, "z_dim": 4, "num_res_blocks": 1,
         "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4},
    text_encoder={
        "vocab_size": 64, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2,
        "num_heads": 2, "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32, "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1,
    },
    frames=9, height=64, width=64, text_len=16, caption_tokens=8, blk=16, lora_rank=4,
)  # fmt: skip


# ---- measuring ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device, *, warmup: int, reps: int) -> dict:
    """Seconds of each call of fn(): the median of `reps` calls after `warmup` calls, and the
    first call's (what a fresh process pays: allocator growth, cuDNN and Triton set-up)."""
    times = []
    for _ in range(warmup + reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times[warmup:]), "times_s": times[warmup:],
            "first_s": times[0]}  # fmt: skip


def _fresh(device: torch.device) -> None:
    """Free what the last measurement left and start a new peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _memory(device: torch.device) -> dict[str, float | None]:
    """Peak and current allocated GiB since the last _fresh (None on the CPU)."""
    if device.type != "cuda":
        return {"peak_gib": None, "allocated_gib": None}
    return {
        "peak_gib": torch.cuda.max_memory_allocated() / GIB,
        "allocated_gib": torch.cuda.memory_allocated() / GIB,
    }


# ---- the models --------------------------------------------------------------------------------
def build_transformer(shape: Shape, device: torch.device):
    """The WanTransformer3DModel of `shape`, float32, seed 0 (the same weights every call)."""
    from diffusers import WanTransformer3DModel

    with torch.device(device):
        torch.manual_seed(0)
        return WanTransformer3DModel(**shape.transformer)


def build_vae(shape: Shape, device: torch.device):
    """The AutoencoderKLWan of `shape`, float32, frozen, as load_vae gives it."""
    from diffusers import AutoencoderKLWan

    with torch.device(device):
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**shape.vae)
    return vae.eval().requires_grad_(False)


def build_text_encoder(shape: Shape, device: torch.device):
    """The UMT5EncoderModel of `shape`, float32, frozen."""
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device(device):
        torch.manual_seed(0)
        encoder = UMT5EncoderModel(UMT5Config(**shape.text_encoder))
    return encoder.eval().requires_grad_(False)


def pipeline_info(shape: Shape, vae):
    """The PipelineInfo that read_pipeline would give a directory of these configs."""
    from orchestrator.models.pipeline import PipelineInfo

    return PipelineInfo(
        root=Path(f"<random {shape.name}>"), pipeline_class="WanPipeline",
        scheduler_class="UniPCMultistepScheduler", z_dim=vae.config.z_dim, scale_temporal=4,
        scale_spatial=8, patch=tuple(shape.transformer["patch_size"]),
        in_channels=shape.transformer["in_channels"], text_dim=shape.transformer["text_dim"],
        text_encoder_dim=shape.text_encoder["d_model"], max_text_len=shape.text_len, shift=3.0,
        latents_mean=tuple(vae.config.latents_mean), latents_std=tuple(vae.config.latents_std),
        expand_timesteps=False,
    )  # fmt: skip


def sla_config(shape: Shape, args: argparse.Namespace):
    from sla_kernel_glue import SLAConfig

    return SLAConfig(topk=args.topk, blkq=shape.blk, blkk=shape.blk, backend=args.backend)


def prepare_model(model, shape: Shape, *, mode: str, sla) -> Any:
    """The recipe's order: the adapter, then SLA, then a frozen base's freezing (mode "lora" or
    "sla_only": only the adapter and SLA's proj_l train). Returns the SLA handle (or None)."""
    from orchestrator.recipe.config import LoraConfig
    from orchestrator.recipe.lora import add_lora, lora_parameters
    from sla_kernel_glue import apply_sla

    if mode == "lora":
        add_lora(model, LoraConfig(rank=shape.lora_rank))
    handle = apply_sla(model, sla) if sla is not None else None
    if mode != "full":
        layers = handle.layers.values() if handle is not None else ()
        trainable = {id(p) for layer in layers for p in layer.parameters() if p.requires_grad}
        if mode == "lora":
            trainable |= {id(p) for p in lora_parameters(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
    return handle


def make_batch(shape: Shape, device: torch.device) -> tuple[torch.Tensor, ...]:
    """x0, noise (1, z, F', H', W'), t (1,) and a caption embedding (1, text_len, text_dim)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((1, *shape.latent), generator=g)
    noise = torch.randn((1, *shape.latent), generator=g)
    t = torch.rand(1, generator=g)
    context = torch.randn(1, shape.text_len, shape.transformer["text_dim"], generator=g)
    return tuple(x.to(device) for x in (x0, noise, t, context))
