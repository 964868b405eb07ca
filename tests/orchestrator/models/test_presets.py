"""Wan presets: valid configs, Triton-friendly head dims, a fast tiny step; local model dirs."""

import dataclasses

import pytest
import torch
from diffusers import WanTransformer3DModel

from orchestrator.models import PRESETS, ModelShape, build_preset, load_local, model_source_error
from orchestrator.recipe import TrainConfig
from orchestrator.recipe.flow_matching import class_prompts, flow_loss


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_builds_with_power_of_two_head_dim(name):
    preset = PRESETS[name]
    assert preset.head_dim in (32, 64, 128)
    with torch.device("meta"):  # shapes only: the large presets are GPU-sized
        model = WanTransformer3DModel(**preset.transformer_config())
    shape = ModelShape.of(model)
    assert (shape.heads, shape.head_dim, shape.layers) == (
        preset.heads,
        preset.head_dim,
        preset.layers,
    )
    assert shape.tokens(preset.frames, preset.size, preset.size) == preset.tokens


def test_preset_sizes_span_cpu_to_h200():
    assert PRESETS["tiny"].tokens == 256
    assert PRESETS["wan-1.3b"].tokens == 32768
    with torch.device("meta"):
        big = WanTransformer3DModel(**PRESETS["wan-1.3b"].transformer_config())
    assert 1.2e9 < sum(p.numel() for p in big.parameters()) < 1.6e9  # Wan2.1-1.3B-like
    # wan-1.3b-6l: the same layers and tokens, 6 of the 30 blocks.
    six = PRESETS["wan-1.3b-6l"]
    assert six.tokens == 32768 and six.layers == 6
    assert dataclasses.replace(six, layers=30, note="") == dataclasses.replace(
        PRESETS["wan-1.3b"], note=""
    )


@pytest.mark.slow
def test_tiny_training_steps_fit_one_fixed_batch():
    # A functional check of the tiny preset (timing belongs in benchmarks, not tests): a few
    # AdamW steps on one fixed batch, noise and timesteps lower the flow-matching loss.
    model = build_preset("tiny", seed=0)
    preset = PRESETS["tiny"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, preset.in_channels, preset.frames, preset.size, preset.size, generator=g)
    noise, t = torch.randn(x0.shape, generator=g), torch.rand(4, generator=g)
    context = class_prompts(preset.text_len, preset.text_dim)[torch.tensor([0, 1, 2, 3])]
    losses = []
    for _ in range(8):
        loss = flow_loss(model, x0, noise, t, context)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0]


def test_same_seed_same_weights():
    a, b = build_preset("tiny", seed=5), build_preset("tiny", seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = build_preset("tiny", seed=6)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_local_model_directory_loads(tmp_path):
    build_preset("tiny", seed=1).save_pretrained(tmp_path / "wan")
    model = load_local(tmp_path / "wan")
    assert ModelShape.of(model).head_dim == 32
    config = TrainConfig(model=str(tmp_path / "wan"), data={"frames": 2, "size": 8})
    assert config.model == str(tmp_path / "wan")


def test_wrong_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError) as err:
        TrainConfig(model=str(tmp_path / "no-such-model"))
    message = str(err.value)
    assert (
        "model ('" in message
        and "tiny, small, medium, wan-1.3b, wan-1.3b-6l" in message
        and "does not exist" in message
    )
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in model_source_error(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="has no config.json"):
        load_local(tmp_path / "empty")
