"""Loading a Wan pipeline directory's models (read and checked by pipeline.py's read_pipeline)
and running them for the cache and the validation: VAE encode and decode with the latent
normalisation, text encoding padded to the pipeline's length."""

from __future__ import annotations

from typing import TYPE_CHECKING

import diffusers
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from orchestrator.models.pipeline import PipelineInfo

if TYPE_CHECKING:  # transformers and the Wan pipeline module load only for text encoding
    from transformers import PreTrainedTokenizerBase, UMT5EncoderModel


def load_vae(
    info: PipelineInfo, *, device: torch.device | str, dtype: torch.dtype
) -> AutoencoderKLWan:
    """The pipeline's VAE, frozen, in eval mode on `device`."""
    vae = AutoencoderKLWan.from_pretrained(
        info.root / "vae", torch_dtype=dtype, local_files_only=True
    )
    return vae.to(device).eval().requires_grad_(False)


def load_text_encoder(
    info: PipelineInfo, *, device: torch.device | str, dtype: torch.dtype
) -> tuple[PreTrainedTokenizerBase, UMT5EncoderModel]:
    """The pipeline's tokenizer and its text encoder (frozen, eval mode, on `device`)."""
    from transformers import AutoTokenizer, UMT5EncoderModel  # heavy: only text encoding

    tokenizer = AutoTokenizer.from_pretrained(info.root / "tokenizer", local_files_only=True)
    encoder = UMT5EncoderModel.from_pretrained(
        info.root / "text_encoder", dtype=dtype, local_files_only=True
    )
    return tokenizer, encoder.to(device).eval().requires_grad_(False)


def load_transformer(
    info: PipelineInfo, *, dtype: torch.dtype = torch.float32
) -> WanTransformer3DModel:
    """The pipeline's transformer (on the CPU; the trainer places it)."""
    return WanTransformer3DModel.from_pretrained(
        info.root / "transformer", torch_dtype=dtype, local_files_only=True
    )


def load_scheduler(info: PipelineInfo) -> diffusers.SchedulerMixin:
    """The scheduler class named in scheduler_config.json, from that config."""
    cls = getattr(diffusers, info.scheduler_class)
    return cls.from_pretrained(info.root / "scheduler", local_files_only=True)


def _latent_stats(
    info: PipelineInfo, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """latents_mean and latents_std as (1, z_dim, 1, 1, 1) tensors."""
    shape = (1, info.z_dim, 1, 1, 1)
    mean = torch.tensor(info.latents_mean).view(shape).to(device, dtype)
    std = torch.tensor(info.latents_std).view(shape).to(device, dtype)
    return mean, std


@torch.no_grad()
def encode_videos(
    vae: AutoencoderKLWan, info: PipelineInfo, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised VAE posterior of clips: (mean, std), each (B, z_dim, F', H', W') float32 CPU.

    pixels: (B, 3, F, H, W) in [-1, 1]. mean = (posterior mean - latents_mean) / latents_std and
    std = posterior std / latents_std, so mean + std * noise is a normalised latent sample.
    """
    if pixels.ndim != 5 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, F, H, W), got {tuple(pixels.shape)}")
    _, _, frames, height, width = pixels.shape
    errors = info.size_errors(frames, height, width)
    if errors:
        raise ValueError("; ".join(errors))
    low, high = float(pixels.min()), float(pixels.max())
    if low < -1.001 or high > 1.001:
        raise ValueError(f"pixels must lie in [-1, 1], got values in [{low:.3g}, {high:.3g}]")
    param = next(vae.parameters())
    posterior = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
    mean, std = _latent_stats(info, torch.device("cpu"), torch.float32)
    latent_mean = (posterior.mean.float().cpu() - mean) / std
    latent_std = posterior.std.float().cpu() / std
    return latent_mean, latent_std


@torch.no_grad()
def decode_latents(
    vae: AutoencoderKLWan, info: PipelineInfo, latents: torch.Tensor
) -> torch.Tensor:
    """Pixels (B, 3, F, H, W) float32 CPU in [-1, 1] of normalised latents (B, z_dim, F', H', W').

    The same operations as WanPipeline's decode (un-normalise in the VAE's dtype, then decode).
    """
    param = next(vae.parameters())
    latents = latents.to(param.device, dtype=vae.dtype)
    mean, std = _latent_stats(info, latents.device, latents.dtype)
    inverse_std = 1.0 / std  # WanPipeline divides by 1 / std: kept so the result is bit-identical
    video = vae.decode(latents / inverse_std + mean, return_dict=False)[0]
    return video.float().cpu()


@torch.no_grad()
def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: UMT5EncoderModel,
    prompts: list[str],
    *,
    max_len: int,
    device: torch.device | str,
) -> list[torch.Tensor]:
    """Each prompt's embedding (L_i, D) float32 CPU, trimmed to its token count (<= max_len).

    The computation of WanPipeline._get_t5_prompt_embeds: clean, tokenize padded to max_len,
    encode with the attention mask, keep the first L_i positions.
    """
    # WanPipeline's own cleaning; heavy: the Wan pipeline module loads transformers
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    cleaned = [prompt_clean(p) for p in prompts]
    tokens = tokenizer(
        cleaned,
        padding="max_length",
        max_length=max_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    lengths = tokens.attention_mask.gt(0).sum(dim=1).long()
    hidden = text_encoder(
        tokens.input_ids.to(device), tokens.attention_mask.to(device)
    ).last_hidden_state  # (B, max_len, D)
    hidden = hidden.float().cpu()
    return [h[:n] for h, n in zip(hidden, lengths.tolist(), strict=True)]


def pad_prompts(embeds: list[torch.Tensor], max_len: int) -> torch.Tensor:
    """(B, max_len, D): each (L_i, D) embedding followed by zeros, as the transformer is fed."""
    if not embeds:
        raise ValueError("pad_prompts needs at least one prompt embedding")
    too_long = [e.shape[0] for e in embeds if e.shape[0] > max_len]
    if too_long:
        raise ValueError(f"prompt embeddings of {too_long} tokens exceed max_len ({max_len})")
    return torch.stack(
        [torch.cat([e, e.new_zeros(max_len - e.shape[0], e.shape[1])]) for e in embeds]
    )
