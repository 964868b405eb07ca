"""The tiny Wan pipeline: diffusers' WanPipeline loads it and generates; seeded; built atomically."""

from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline

from orchestrator.models import tiny_pipeline as tiny
from orchestrator.models.pipeline import read_pipeline
from tests.pipelines import generate, tiny_pipeline


@pytest.fixture(scope="module")
def pipelines_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipelines")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("variant", list(tiny.VARIANTS))
def test_wan_pipeline_loads_it_and_generates_a_video(pipelines_dir, variant):
    root = tiny_pipeline(pipelines_dir, variant)
    pipe = WanPipeline.from_pretrained(root, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a handwritten digit seven moving left across a dark background"
    video = generate(pipe, prompt, max_text_len=tiny.TEXT_LEN)
    assert video.shape == (1, 9, 3, 64, 64)  # (B, F, C, H, W) in [0, 1]
    assert torch.isfinite(video).all() and 0 <= video.min() and video.max() <= 1
    assert pipe.config.expand_timesteps is tiny.VARIANTS[variant].expand_timesteps


def test_same_seed_same_files_other_seed_other_weights(tmp_path, pipelines_dir):
    first = _files(tiny_pipeline(pipelines_dir, "wan2.1", seed=0))
    assert _files(tiny.build_tiny_pipeline(tmp_path / "again", seed=0)) == first
    other = _files(tiny.build_tiny_pipeline(tmp_path / "other", seed=1))
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert other.keys() == first.keys() and other[weights] != first[weights]


def test_the_build_is_atomic(tmp_path, monkeypatch):
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        tiny.build_tiny_pipeline(existing)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(WanPipeline, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        tiny.build_tiny_pipeline(tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # no half build, no tmp dir


def test_unknown_variant_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"variant \('wan3'\) must be one of wan2.1, wan2.2"):
        tiny.build_tiny_pipeline(tmp_path / "p", variant="wan3")


def test_cli_builds_the_variant_and_prints_its_path(tmp_path, capsys):
    out = tmp_path / "cli"
    assert tiny.main([str(out), "--variant", "wan2.2", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert read_pipeline(out).scale_spatial == 16
    with pytest.raises(SystemExit):  # exists: argparse's error, exit status 2
        tiny.main([str(out)])
    assert "already exists" in capsys.readouterr().err


def test_tokenizer_knows_the_caption_words_and_ends_with_eos():
    tokenizer = tiny.build_tokenizer()
    ids = tokenizer(
        "A handwritten digit Seven, moving up-left across the dark background."
    ).input_ids
    assert tokenizer.unk_token_id not in ids
    assert ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    assert tokenizer.model_max_length == tiny.TEXT_LEN
    assert set("zero one two three four five six seven eight nine".split()) <= set(
        tokenizer.get_vocab()
    )
