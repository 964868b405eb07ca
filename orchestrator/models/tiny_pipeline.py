"""A complete random-weight Wan pipeline built locally (nothing is downloaded), for tests and demos.

Laid out as the real ones are, so `WanPipeline.from_pretrained(out, local_files_only=True)` loads
it and generates video:

- tokenizer/: a word-level tokenizer trained with `tokenizers` on WORDS (lower-cased, "</s>"
  appended as T5 does; pad 0, eos 1, unk 2), saved as a fast tokenizer with model_max_length
  TEXT_LEN, so prompts are padded to TEXT_LEN tokens rather than Wan's 512;
- text_encoder/: a UMT5EncoderModel with d_model D_MODEL and 2 layers;
- vae/: an AutoencoderKLWan with base_dim 8. "wan2.1": z_dim 4 and Wan2.1's 4x8x8 compression;
  "wan2.2": z_dim 8 and Wan2.2 TI2V's 4x16x16 (is_residual, a 2x2 pixel patch: 12 channels in
  and out), and model_index.json's expand_timesteps on as TI2V-5B ships it;
- transformer/: the "tiny" preset's WanTransformer3DModel (2 heads x 32, 2 layers) with
  in/out channels = z_dim and text_dim = D_MODEL;
- scheduler/: UniPCMultistepScheduler on the flow-matching schedule (use_flow_sigmas,
  flow_prediction) with flow_shift 3.0 (wan2.1) or 5.0 (wan2.2): the scheduler and config keys
  the Wan-AI Diffusers repositories ship, so code reading a real pipeline reads this one alike;
- "wan2.2-a14b": also transformer_2/ (a second tiny transformer, its own random weights) and
  model_index.json's boundary_ratio 0.875, as Wan2.2 A14B's two experts are laid out.

The same seed gives the same files. `out` appears by an atomic rename of a finished build.

    python -m orchestrator.models.tiny_pipeline OUT [--variant wan2.1|wan2.2|wan2.2-a14b] [--seed N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from .wan_presets import PRESETS

TEXT_LEN = 32  # the tokenizer's model_max_length: prompts are padded to this many tokens
D_MODEL = 32  # the text encoder's width = the transformer's text_dim
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5's vocabulary
WORDS = (
    "zero one two three four five six seven eight nine ten "
    "a an the this that of and or with in on at to from into onto over under by "
    "handwritten digit digits number numeral moving moves move slowly quickly fast slow "
    "steadily bouncing bounces drifting sliding across along around toward towards away "
    "left right up down upward downward diagonally horizontally vertically edge edges corner "
    "dark black white gray grey bright light background canvas frame frames video clip "
    "small large big tiny single is are it its"
).split() + list(",.;:!?-'\"")  # Whitespace pre-tokenization splits punctuation off words


@dataclasses.dataclass(frozen=True)
class TinyVariant:
    """What differs between the tiny pipeline's variants."""

    vae: dict[str, Any]  # AutoencoderKLWan keyword arguments
    flow_shift: float
    expand_timesteps: bool
    note: str
    boundary_ratio: float | None = None  # two experts (transformer_2) switching here; None: one


def _latent_stats(z_dim: int) -> dict[str, list[float]]:
    """Non-trivial latents_mean / latents_std, so that a missed normalisation shows in tests."""
    return {
        "latents_mean": [round(0.05 * (i - z_dim // 2), 4) for i in range(z_dim)],
        "latents_std": [round(0.5 + 0.25 * i, 4) for i in range(z_dim)],
    }


# Wan2.2 TI2V's VAE, as Wan-AI/Wan2.2-TI2V-5B-Diffusers configures AutoencoderKLWan: a 2x2 pixel
# patch (3 * 2 * 2 = 12 channels in and out) before a residual encoder, 4x16x16 in all
WAN22_VAE_LAYOUT: dict[str, Any] = {
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 16,
}

VARIANTS: dict[str, TinyVariant] = {
    "wan2.1": TinyVariant(
        vae={"base_dim": 8, "z_dim": 4, "num_res_blocks": 1, **_latent_stats(4)},
        flow_shift=3.0,
        expand_timesteps=False,
        note="Wan2.1's VAE layout: z_dim 4, 4x8x8 compression",
    ),
    "wan2.2": TinyVariant(
        vae={
            "base_dim": 8,
            "decoder_base_dim": 16,
            "z_dim": 8,
            "num_res_blocks": 1,
            **WAN22_VAE_LAYOUT,
            **_latent_stats(8),
        },
        flow_shift=5.0,
        expand_timesteps=True,
        note="Wan2.2 TI2V's VAE layout: z_dim 8, 4x16x16 compression",
    ),
    "wan2.2-a14b": TinyVariant(
        vae={"base_dim": 8, "z_dim": 4, "num_res_blocks": 1, **_latent_stats(4)},
        flow_shift=3.0,
        expand_timesteps=False,
        note="Wan2.2 A14B's layout: two experts (transformer for high noise, transformer_2 for"
        " low) switching at boundary_ratio 0.875, Wan2.1's VAE layout",
        boundary_ratio=0.875,
    ),
}


def build_tokenizer(max_length: int = TEXT_LEN) -> PreTrainedTokenizerFast:
    """The word-level tokenizer over WORDS (unknown words map to <unk>); prompts are padded to
    max_length tokens."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tokenizer.train_from_iterator(WORDS, trainer=trainer)
    eos = ("</s>", tokenizer.token_to_id("</s>"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def _text_encoder(vocab_size: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=D_MODEL,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config)


def _pipeline(variant: TinyVariant) -> WanPipeline:
    """The pipeline of a variant, initialised from the current torch RNG state."""
    tokenizer = build_tokenizer()
    text_encoder = _text_encoder(len(tokenizer))
    vae = AutoencoderKLWan(**variant.vae)
    z_dim = variant.vae["z_dim"]
    transformer_config = {
        **PRESETS["tiny"].transformer_config(),
        "in_channels": z_dim,
        "out_channels": z_dim,
        "text_dim": D_MODEL,
    }
    transformer = WanTransformer3DModel(**transformer_config)
    second = None if variant.boundary_ratio is None else WanTransformer3DModel(**transformer_config)
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=variant.flow_shift,
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        transformer_2=second,
        boundary_ratio=variant.boundary_ratio,
        expand_timesteps=variant.expand_timesteps,
    )


def build_tiny_pipeline(out: str | Path, *, variant: str = "wan2.1", seed: int = 0) -> Path:
    """Build the tiny random-weight Wan pipeline `variant` into `out` (which must not exist)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant ({variant!r}) must be one of {', '.join(VARIANTS)}")
    out = Path(out).expanduser().absolute()
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pipe = _pipeline(VARIANTS[variant])
        pipe.save_pretrained(tmp, safe_serialization=True)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: build a tiny pipeline and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.models.tiny_pipeline",
        description="Build a tiny random-weight diffusers Wan pipeline (nothing is downloaded).",
    )
    parser.add_argument("out", type=Path, help="the pipeline directory to create")
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        default="wan2.1",
        help="; ".join(f"{name}: {v.note}" for name, v in VARIANTS.items()),
    )
    parser.add_argument("--seed", type=int, default=0, help="weights are a function of the seed")
    args = parser.parse_args(argv)
    try:
        path = build_tiny_pipeline(args.out, variant=args.variant, seed=args.seed)
    except FileExistsError as exc:
        parser.error(str(exc))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
