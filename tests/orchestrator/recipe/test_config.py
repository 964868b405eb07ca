"""TrainConfig/DataConfig: defaults valid, every bad key named at once with its value."""

import dataclasses

import pytest

from orchestrator.recipe import DataConfig, TrainConfig


def test_defaults_are_valid_and_frozen():
    config = TrainConfig()
    assert config.model == "tiny" and config.train_base is True and config.data == DataConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3  # type: ignore[misc]


def test_all_errors_reported_at_once():
    with pytest.raises(ValueError) as err:
        TrainConfig(
            steps=0,
            lr=-1.0,
            lr_schedule="linear",
            mixed_precision="fp8",
            train_base="yes",
            data=DataConfig(size=15, num_val=0),
        )
    message = str(err.value)
    for expected in (
        "steps (0) must be a positive integer",
        "lr (-1.0) must be a positive number",
        "lr_schedule ('linear') must be one of constant, cosine",
        "mixed_precision ('fp8') must be one of auto, no, bf16, fp16",
        "train_base ('yes') must be true or false",
        "data.size (15) must be even",
        "data.num_val (0) must be a positive integer",
    ):
        assert expected in message


def test_from_dict_nested_and_unknown_keys():
    config = TrainConfig.from_dict({"steps": 7, "data": {"frames": 2, "size": 8}})
    assert config.steps == 7 and config.data.frames == 2
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(
            {"stepz": 1, "data": {"fpz": 3}, "validation": {"promptz": []}, "lr": 0}
        )
    message = str(err.value)
    assert "unknown train key 'stepz'" in message and "unknown data key 'fpz'" in message
    assert "unknown validation key 'promptz'" in message
    assert "lr (0) must be a positive number" in message


def test_local_model_needs_clip_shape(tmp_path):
    from orchestrator.models import build_preset

    build_preset("tiny", seed=0).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="data.frames and data.size must be given"):
        TrainConfig(model=str(tmp_path / "m"))
