"""A Wan pipeline directory: its configs read (every problem at once), and our VAE / text-encoder
calls checked against diffusers' WanPipeline running the same tiny pipeline."""

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
)

from orchestrator.models.pipeline import PipelineError, is_pipeline_dir, read_pipeline
from orchestrator.models.pipeline_models import (
    decode_latents,
    encode_prompts,
    encode_videos,
    load_scheduler,
    load_text_encoder,
    load_transformer,
    load_vae,
    pad_prompts,
)
from tests.pipelines import break_pipeline, edit_json, generate, tiny_pipeline, wan_config_layout

VARIANTS = ("wan2.1", "wan2.2")
PROMPTS = [
    "a handwritten digit seven moving left across a dark background",
    "  The digit ZERO,\n moving   up.  ",  # cleaned (whitespace) and lower-cased by the tokenizer
    " ".join(["the digit one bouncing"] * 10),  # 41 tokens: truncated to max_text_len
]


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pipelines")
    return {variant: tiny_pipeline(base, variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def pipes(roots) -> dict[str, WanPipeline]:
    loaded = {
        v: WanPipeline.from_pretrained(root, local_files_only=True) for v, root in roots.items()
    }
    for pipe in loaded.values():
        pipe.set_progress_bar_config(disable=True)
    return loaded


def _problems(root: Path) -> list[str]:
    with pytest.raises(PipelineError) as caught:
        read_pipeline(root)
    assert str(caught.value).count("\n  - ") == len(caught.value.problems)
    return caught.value.problems


# Reading configs


@pytest.mark.parametrize(
    ("variant", "z_dim", "spatial", "shift", "expand"),
    [("wan2.1", 4, 8, 3.0, False), ("wan2.2", 8, 16, 5.0, True)],
)
def test_info_of_each_variant(roots, variant, z_dim, spatial, shift, expand):
    info = read_pipeline(roots[variant])
    assert (info.pipeline_class, info.scheduler_class) == ("WanPipeline", "UniPCMultistepScheduler")
    assert (info.z_dim, info.scale_temporal, info.scale_spatial) == (z_dim, 4, spatial)
    assert (info.patch, info.in_channels, info.text_dim, info.text_encoder_dim) == (
        (1, 2, 2),
        z_dim,
        32,
        32,
    )
    assert (info.max_text_len, info.shift, info.expand_timesteps) == (32, shift, expand)
    assert len(info.latents_mean) == len(info.latents_std) == z_dim


@pytest.mark.parametrize("variant", VARIANTS)
def test_info_agrees_with_what_wan_pipeline_loads(roots, pipes, variant):
    info, pipe = read_pipeline(roots[variant]), pipes[variant]
    assert info.scale_temporal == pipe.vae_scale_factor_temporal
    assert info.scale_spatial == pipe.vae_scale_factor_spatial
    assert info.patch == tuple(pipe.transformer.config.patch_size)
    assert info.in_channels == pipe.transformer.config.in_channels == pipe.vae.config.z_dim
    assert info.text_encoder_dim == pipe.text_encoder.config.d_model
    assert list(info.latents_mean) == pipe.vae.config.latents_mean
    assert list(info.latents_std) == pipe.vae.config.latents_std
    assert info.shift == pipe.scheduler.config.flow_shift
    assert info.expand_timesteps == pipe.config.expand_timesteps


@pytest.mark.parametrize(
    ("release", "z_dim", "spatial", "shift"),
    [("Wan2.1-T2V-1.3B", 16, 8, 3.0), ("Wan2.2-TI2V-5B", 48, 16, 5.0)],
)
def test_released_wan_layouts(tmp_path, release, z_dim, spatial, shift):
    info = read_pipeline(wan_config_layout(tmp_path / release, release))
    assert (info.z_dim, info.scale_temporal, info.scale_spatial) == (z_dim, 4, spatial)
    assert (info.text_dim, info.text_encoder_dim, info.max_text_len) == (4096, 4096, 512)
    assert (info.shift, info.expand_timesteps) == (shift, release.startswith("Wan2.2"))
    assert info.latent_shape(81, 480, 832)[1:] == (21, 480 // spatial, 832 // spatial)
    assert info.size_errors(81, 480, 832) == []


def test_absent_keys_take_the_defaults_from_pretrained_uses(roots, tmp_path):
    root = break_pipeline(roots["wan2.1"], tmp_path / "p", [])
    edit_json(root / "vae" / "config.json", scale_factor_temporal=None, scale_factor_spatial=None)
    edit_json(root / "transformer" / "config.json", patch_size=None)
    info = read_pipeline(root)
    vae = AutoencoderKLWan.from_pretrained(root / "vae", local_files_only=True)
    assert (info.scale_temporal, info.scale_spatial) == (4, 8)
    assert (vae.config.scale_factor_temporal, vae.config.scale_factor_spatial) == (4, 8)
    assert info.patch == tuple(load_transformer(info).config.patch_size) == (1, 2, 2)


def test_flow_match_euler_shift_and_an_absent_shift(roots, tmp_path):
    root = break_pipeline(roots["wan2.1"], tmp_path / "p", "no-scheduler")
    FlowMatchEulerDiscreteScheduler(shift=5.0).save_config(root / "scheduler")
    info = read_pipeline(root)
    assert (info.scheduler_class, info.shift) == ("FlowMatchEulerDiscreteScheduler", 5.0)
    assert isinstance(load_scheduler(info), FlowMatchEulerDiscreteScheduler)
    edit_json(root / "scheduler" / "scheduler_config.json", shift=None)
    assert read_pipeline(root).shift == 1.0


@pytest.mark.parametrize(("limit", "expected"), [(None, 512), (10**30, 512), (600, 512), (77, 77)])
def test_max_text_len_is_512_or_a_smaller_tokenizer_limit(roots, tmp_path, limit, expected):
    root = break_pipeline(roots["wan2.1"], tmp_path / "p", [])
    edit_json(root / "tokenizer" / "tokenizer_config.json", model_max_length=limit)
    assert read_pipeline(root).max_text_len == expected


def test_every_problem_is_listed_at_once_each_naming_its_path(roots, tmp_path):
    root = break_pipeline(roots["wan2.1"], tmp_path / "p", ["no-vae", "no-text_encoder"])
    problems = _problems(root)
    assert problems == [
        f"{root / 'vae'}/: missing; a Wan pipeline needs an AutoencoderKLWan (config.json and"
        " its weights) there",
        f"{root / 'text_encoder'}/: missing; a Wan pipeline needs a UMT5EncoderModel"
        " (config.json and its weights) there",
    ]


def test_unrelated_problems_all_come_back_together(roots, tmp_path):
    damages = ["bad-model_index", "no-tokenizer", "missing-shard", "text_dim", "scheduler-class"]
    problems = _problems(break_pipeline(roots["wan2.1"], tmp_path / "p", damages))
    assert len(problems) == len(damages), problems


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no-model_index", "model_index.json: missing; a Wan pipeline needs the pipeline's index"),
        ("bad-model_index", "model_index.json: not readable JSON"),
        ("no-transformer", "transformer/: missing; a Wan pipeline needs the WanTransformer3DModel"),
        ("no-tokenizer", "tokenizer/: missing; a Wan pipeline needs the text encoder's tokenizer"),
        ("no-scheduler", "scheduler/: missing; a Wan pipeline needs a flow-matching scheduler"),
        ("no-vae-config", "vae/config.json: missing; a Wan pipeline needs the config of"),
        ("no-transformer-weights", "transformer/: no weight files; the WanTransformer3DModel"),
        ("missing-shard", "missing: diffusion_pytorch_model-00002-of-00002.safetensors"),
        ("no-tokenizer-file", "tokenizer/: no tokenizer file"),
        ("vae-class", "'AutoencoderKL'; a Wan pipeline's vae must be an AutoencoderKLWan"),
        ("in_channels", "transformer/config.json: in_channels (5) must equal the VAE's z_dim (4,"),
        ("text_dim", "text_dim (48) must equal the text encoder's d_model (32,"),
        ("scheduler-class", "DDIMScheduler is not a flow-matching scheduler"),
        ("no-flow-sigmas", "UniPCMultistepScheduler must have use_flow_sigmas true"),
    ],
)
def test_each_problem_names_the_path_and_the_need(roots, tmp_path, damage, expected):
    problems = _problems(break_pipeline(roots["wan2.1"], tmp_path / "p", damage))
    assert len(problems) == 1 and expected in problems[0], problems
    assert str(tmp_path / "p") in problems[0]


def test_not_a_directory(tmp_path):
    assert not is_pipeline_dir(tmp_path / "nowhere")
    problems = _problems(tmp_path / "nowhere")
    assert problems[0].startswith(f"{tmp_path / 'nowhere'}: not a directory")


def test_is_pipeline_dir(roots, tmp_path):
    assert is_pipeline_dir(roots["wan2.1"])
    assert not is_pipeline_dir(roots["wan2.1"] / "transformer")


# Clip sizes


def test_size_errors_name_the_value_and_the_allowed_ones(roots):
    info = read_pipeline(roots["wan2.1"])
    assert info.size_errors(49, 480, 832) == []
    names = ("data.frames", "data.size", "data.size")
    assert info.size_errors(50, 500, 500, names=names) == [
        "data.frames (50) must be 4k+1 for the VAE's 4x temporal compression, e.g. 49 or 53",
        "data.size (500) must be a multiple of 16 (the VAE's 8x times the 2x2 patch),"
        " e.g. 496 or 512",
    ]
    assert info.size_errors(0, 8, 64) == [
        "frames (0) must be 4k+1 for the VAE's 4x temporal compression, e.g. 1 or 5",
        "height (8) must be a multiple of 16 (the VAE's 8x times the 2x2 patch), e.g. 16 or 32",
    ]
    wan22 = read_pipeline(roots["wan2.2"])
    assert wan22.size_errors(9, 48, 64) == [
        "height (48) must be a multiple of 32 (the VAE's 16x times the 2x2 patch), e.g. 32 or 64"
    ]


def test_latent_shape(roots):
    assert read_pipeline(roots["wan2.1"]).latent_shape(9, 64, 96) == (4, 3, 8, 12)
    assert read_pipeline(roots["wan2.2"]).latent_shape(81, 704, 1280) == (8, 21, 44, 80)
    with pytest.raises(ValueError, match=r"frames \(8\) must be 4k\+1"):
        read_pipeline(roots["wan2.1"]).latent_shape(8, 64, 64)


# VAE


@pytest.mark.parametrize(
    ("variant", "latent"), [("wan2.1", (4, 3, 8, 8)), ("wan2.2", (8, 3, 4, 4))]
)
def test_encode_videos_returns_the_normalised_posterior(roots, variant, latent):
    info = read_pipeline(roots[variant])
    vae = load_vae(info, device="cpu", dtype=torch.float32)
    pixels = torch.rand(2, 3, 9, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean, std = encode_videos(vae, info, pixels)
    assert mean.shape == std.shape == (2, *latent)
    assert mean.dtype == std.dtype == torch.float32 and mean.device.type == "cpu"
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    m = torch.tensor(info.latents_mean).view(1, -1, 1, 1, 1)
    s = torch.tensor(info.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(mean, (posterior.mean - m) / s, rtol=0, atol=0)
    torch.testing.assert_close(std, posterior.std / s, rtol=0, atol=0)
    assert (std > 0).all()


def test_encode_videos_refuses_bad_clips(roots):
    info = read_pipeline(roots["wan2.1"])
    vae = load_vae(info, device="cpu", dtype=torch.float32)
    with pytest.raises(
        ValueError, match=r"pixels must be \(B, 3, F, H, W\), got \(1, 4, 9, 64, 64\)"
    ):
        encode_videos(vae, info, torch.zeros(1, 4, 9, 64, 64))
    with pytest.raises(ValueError, match=r"frames \(8\) must be 4k\+1"):
        encode_videos(vae, info, torch.zeros(1, 3, 8, 64, 64))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\], got values in \[0, 255\]"):
        encode_videos(
            vae, info, torch.full((1, 3, 9, 64, 64), 255.0).index_fill_(2, torch.tensor([0]), 0)
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_latents_is_wan_pipelines_own_decode(roots, pipes, variant):
    """Our decode of the pipeline's final latents == the video WanPipeline returns, bit for bit."""
    info, pipe = read_pipeline(roots[variant]), pipes[variant]
    final: dict[str, torch.Tensor] = {}

    def keep_latents(pipeline, step, timestep, kwargs):
        final["latents"] = kwargs["latents"].clone()
        return {}

    video = generate(
        pipe, PROMPTS[0], max_text_len=info.max_text_len, callback_on_step_end=keep_latents
    )  # (B, F, 3, H, W) in [0, 1]
    ours = decode_latents(pipe.vae, info, final["latents"])  # (B, 3, F, H, W) in [-1, 1]
    assert ours.shape == (1, 3, 9, 64, 64) and ours.dtype == torch.float32
    assert -1 <= ours.min() and ours.max() <= 1
    # VideoProcessor.postprocess_video(output_type="pt"): (x / 2 + 0.5).clamp(0, 1), frames first
    as_pipeline = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(as_pipeline, video, rtol=0, atol=0)


def test_decode_inverts_the_normalisation_of_encode(roots):
    info = read_pipeline(roots["wan2.1"])
    vae = load_vae(info, device="cpu", dtype=torch.float32)
    pixels = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mean, _ = encode_videos(vae, info, pixels)
    with torch.no_grad():
        expected = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    # only the float32 rounding of normalise then un-normalise separates the two
    torch.testing.assert_close(decode_latents(vae, info, mean), expected, rtol=1e-5, atol=1e-5)


# Text encoder


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_prompt_embeddings_are_what_wan_pipeline_feeds_the_transformer(
    roots, pipes, variant
):
    """Bit for bit. WanPipeline.__call__ encodes under no_grad as we do: encode_prompt called with
    autograd on takes another CPU attention kernel and differs by ~1e-6."""
    info, pipe = read_pipeline(roots[variant]), pipes[variant]
    tokenizer, encoder = load_text_encoder(info, device="cpu", dtype=torch.float32)
    embeds = encode_prompts(tokenizer, encoder, PROMPTS, max_len=info.max_text_len, device="cpu")
    assert [e.shape for e in embeds] == [(11, 32), (8, 32), (32, 32)]  # tokens + </s>; truncated
    assert all(e.dtype == torch.float32 and e.device.type == "cpu" for e in embeds)
    ours = pad_prompts(embeds, info.max_text_len)

    with torch.no_grad():
        theirs, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, max_sequence_length=info.max_text_len
        )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    fed = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        generate(
            pipe, PROMPTS, max_text_len=info.max_text_len, guidance_scale=1.0, output_type="latent"
        )
    finally:
        hook.remove()
    torch.testing.assert_close(ours, fed[0], rtol=0, atol=0)


def test_pad_prompts_zero_pads_and_refuses_too_long():
    padded = pad_prompts([torch.ones(2, 3), torch.ones(4, 3)], 5)
    assert padded.shape == (2, 5, 3)
    assert padded[0, 2:].abs().sum() == 0 and padded[1, :4].eq(1).all()
    with pytest.raises(ValueError, match=r"prompt embeddings of \[4\] tokens exceed max_len \(3\)"):
        pad_prompts([torch.ones(2, 3), torch.ones(4, 3)], 3)


# Loading


def test_load_transformer_and_scheduler(roots):
    info = read_pipeline(roots["wan2.1"])
    transformer = load_transformer(info, dtype=torch.bfloat16)
    assert transformer.patch_embedding.weight.dtype == torch.bfloat16
    assert transformer.scale_shift_table.dtype == torch.float32  # diffusers keeps it in fp32
    assert transformer.config.in_channels == info.z_dim
    scheduler = load_scheduler(info)
    assert isinstance(scheduler, UniPCMultistepScheduler)
    assert scheduler.config.flow_shift == info.shift
