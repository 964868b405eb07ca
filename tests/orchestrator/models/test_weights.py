"""Weight files checked against configs from their headers (orchestrator.models.weights), on
damaged copies of the tiny real pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.models.pipeline import PipelineError, read_pipeline
from orchestrator.models.wan_presets import model_source_error
from tests.media import truncate_file
from tests.pipelines import edit_json


def test_a_transformer_directory_deeper_than_its_weights(tiny_pipeline_dir, tmp_path):
    folder = Path(shutil.copytree(tiny_pipeline_dir / "transformer", tmp_path / "transformer"))
    assert model_source_error(str(folder)) is None
    edit_json(folder / "config.json", num_layers=3)
    error = model_source_error(str(folder))
    assert error is not None and "num_layers is 3" in error and "2 blocks" in error


def test_every_damaged_component_is_listed_at_once(tiny_pipeline_dir, tmp_path):
    """A truncated text encoder and a truncated VAE, each named, in one PipelineError."""
    root = Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "p"))
    encoder = truncate_file(root / "text_encoder" / "model.safetensors", 0.5)
    vae = truncate_file(root / "vae" / "diffusion_pytorch_model.safetensors", 0.99)
    with pytest.raises(PipelineError) as caught:
        read_pipeline(root)
    assert len(caught.value.problems) == 2
    assert [str(encoder) in p for p in caught.value.problems].count(True) == 1
    assert [str(vae) in p for p in caught.value.problems].count(True) == 1


def test_a_vae_config_that_is_not_its_weights(tiny_pipeline_dir, tmp_path):
    root = Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "p"))
    edit_json(root / "vae" / "config.json", base_dim=16)  # the weights were saved at 8
    with pytest.raises(PipelineError) as caught:
        read_pipeline(root)
    assert any("other shapes" in p and "vae" in p for p in caught.value.problems)


def test_a_text_encoder_whose_weights_lack_a_tensor_or_differ_in_shape(tiny_pipeline_dir, tmp_path):
    """The UMT5 encoder's tensors are compared with its config by name and shape (headers only):
    a tensor left out, which from_pretrained would initialise randomly, or a wider one, is named;
    the untouched encoder (its tied shared/embed_tokens weights saved once) passes."""
    from safetensors.torch import load_file, save_file

    root = Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "p"))
    read_pipeline(root)
    weights = root / "text_encoder" / "model.safetensors"
    tensors = load_file(str(weights))
    norm = next(k for k in sorted(tensors) if k.endswith("layer_norm.weight"))
    save_file({k: v for k, v in tensors.items() if k != norm}, str(weights))
    with pytest.raises(PipelineError) as caught:
        read_pipeline(root)
    (problem,) = caught.value.problems
    assert "text_encoder" in problem and "lack 1 tensors" in problem and norm in problem
    tensors[norm] = tensors[norm].repeat(2)
    save_file(tensors, str(weights))
    with pytest.raises(PipelineError) as caught:
        read_pipeline(root)
    (problem,) = caught.value.problems
    assert "other shapes" in problem and norm in problem
