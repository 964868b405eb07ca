"""TrainConfig is declared once (orchestrator/recipe/config_fields.py): each field's check gives
its message with its key path, every one at once, and `python -m orchestrator.recipe` takes
every plain field as an option with the declared type and default."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.recipe.__main__ import build_parser, config_from_args
from orchestrator.recipe.__main__ import main as recipe_main
from orchestrator.recipe.config import (
    DataConfig,
    LoraConfig,
    TrainConfig,
    ValidationConfig,
)
from orchestrator.recipe.config_fields import is_section, value_type

# A bad value of every field and the message it gives (the section's fields with their key path).
BAD = {
    "model": (5, "model (5) must be a preset name ("),
    "steps": (0, "steps (0) must be a positive integer"),
    "objective": ("kd", "objective ('kd') must be one of flow_matching, distill"),
    "flow_weight": (-1, "flow_weight (-1) must be a number >= 0"),
    "batch_size": (-2, "batch_size (-2) must be a positive integer"),
    "grad_accum": (1.5, "grad_accum (1.5) must be a positive integer"),
    "lr": (-1.0, "lr (-1.0) must be a positive number"),
    "warmup_steps": (-1, "warmup_steps (-1) must be a non-negative integer"),
    "lr_schedule": ("linear", "lr_schedule ('linear') must be one of constant, cosine"),
    "weight_decay": (-0.1, "weight_decay (-0.1) must be a number >= 0"),
    "learned_lr_scale": (0, "learned_lr_scale (0) must be a positive number"),
    "experts": ("middle", "experts ('middle') must be one of both, high_noise, low_noise"),
    "max_grad_norm": ("x", "max_grad_norm ('x') must be a number >= 0"),
    "train_base": ("yes", "train_base ('yes') must be true or false"),
    "mixed_precision": ("fp8", "mixed_precision ('fp8') must be one of auto, no, bf16, fp16"),
    "parallel": ("zero3", "parallel ('zero3') must be one of ddp, fsdp"),
    "seed": (True, "seed (True) must be a non-negative integer"),
    "base_seed": (-1, "base_seed (-1) must be a non-negative integer or null"),
    "timestep_sampling": (
        "normal",
        "timestep_sampling ('normal') must be one of logit_normal, uniform",
    ),
    "timestep_shift": (0, "timestep_shift (0) must be a positive number"),
    "log_every": (0, "log_every (0) must be a positive integer"),
    "eval_every": (-1, "eval_every (-1) must be a non-negative integer"),
    "checkpoint_every": ("2", "checkpoint_every ('2') must be a non-negative integer"),
    "keep_checkpoints": (-3, "keep_checkpoints (-3) must be a non-negative integer"),
    "sample_steps": (0, "sample_steps (0) must be a positive integer"),
    "base_steps": (-1, "base_steps (-1) must be a non-negative integer"),
    "base_lr": (float("inf"), "base_lr (inf) must be a positive number"),
    "base_cache_dir": (3, "base_cache_dir (3) must be a path string or null"),
    "gradient_checkpointing": (1, "gradient_checkpointing (1) must be true or false"),
    "compile": ("no", "compile ('no') must be true or false"),
    "data.source": ("", "data.source ('') must be 'digits', a folder path or a prompt file"),
    "data.generate_steps": (0, "data.generate_steps (0) must be a positive integer"),
    "data.generate_guidance": (0.5, "data.generate_guidance (0.5) must be a number >= 1"),
    "data.frames": (0, "data.frames (0) must be a positive integer or null"),
    "data.size": (15, "data.size (15) must be even (the model patches 2x2 pixels)"),
    "data.num_train": (0, "data.num_train (0) must be a positive integer"),
    "data.num_val": (0, "data.num_val (0) must be a positive integer"),
    "data.fps": (-1, "data.fps (-1) must be a positive number or null (every frame)"),
    "data.short_clips": ("drop", "data.short_clips ('drop') must be one of error, skip"),
    "data.cache_dir": (3, "data.cache_dir (3) must be a path string or null"),
    "validation.prompts": ([" "], "validation.prompts ([' ']) must be non-empty strings"),
    "validation.seeds": ([-1], "validation.seeds ([-1]) must be non-negative integers"),
    "validation.frames": (0, "validation.frames (0) must be a positive integer or null"),
    "validation.size": (
        [0, 8],
        "validation.size ((0, 8)) must be a positive integer, [H, W] or null",
    ),
    "validation.steps": (0, "validation.steps (0) must be a positive integer"),
    "validation.guidance_scale": (0.5, "validation.guidance_scale (0.5) must be a number >= 1"),
    "validation.negative_prompt": (3, "validation.negative_prompt (3) must be a string"),
    "validation.every": (-1, "validation.every (-1) must be a non-negative integer"),
    "lora.rank": (0, "lora.rank (0) must be a positive integer"),
    "lora.alpha": (-1, "lora.alpha (-1) must be a positive number or null (= rank)"),
    "lora.dropout": (1, "lora.dropout (1) must be a number in [0, 1)"),
    "lora.target_modules": ([], "lora.target_modules (()) must be a non-empty list of module"),
}


def key_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        if is_section(f):
            out += key_paths(f.metadata["section"], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def test_every_field_is_declared_with_a_check_and_its_help():
    assert set(BAD) == set(key_paths(TrainConfig)), "a bad value of every field is tested"
    for cls in (TrainConfig, DataConfig, ValidationConfig, LoraConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata["help"], f"{cls.__name__}.{f.name}"
            # model is checked with data and lora (the cross-field checks)
            assert f.metadata["check"] is not None or f.name == "model", f.name


def test_a_bad_value_of_every_field_gives_its_message_with_its_key_path_all_at_once():
    values: dict = {}
    for key, (bad, _) in BAD.items():
        section, _, name = key.rpartition(".")
        (values.setdefault(section, {}) if section else values)[name] = bad
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(values)
    message = str(err.value)
    missing = [expected for _, expected in BAD.values() if expected not in message]
    assert not missing
    assert message.count(" must be ") == len(BAD)  # each once, nothing else


def test_a_section_of_the_wrong_kind_is_named():
    with pytest.raises(ValueError) as err:
        TrainConfig(data=5, lora=[1], validation="x")  # type: ignore[arg-type]
    message = str(err.value)
    assert "data (5) must be a DataConfig or a mapping" in message
    assert "lora ([1]) must be a mapping of rank, alpha, dropout, target_modules or null" in message
    assert "validation ('x') must be a ValidationConfig or a mapping" in message


def test_every_plain_field_is_an_option_with_its_declared_type_and_default(tmp_path):
    options = {a.dest: a for a in build_parser()._actions}
    plain = [f for f in dataclasses.fields(TrainConfig) if not is_section(f) and f.name != "model"]
    argv = ["--dense", "--out", str(tmp_path)]
    for f in plain:
        assert f.name in options, f"--{f.name.replace('_', '-')} is missing"
        assert options[f.name].default == f.default and options[f.name].help
        kind = value_type(TrainConfig, f.name)
        if kind is not bool:
            value = {int: "3", float: "0.5", str: "cosine"}[kind]
            argv += [options[f.name].option_strings[0], value]
    argv += ["--freeze-base", "--gradient-checkpointing", "--compile"]
    args = build_parser().parse_args(argv)
    for f in plain:
        kind = value_type(TrainConfig, f.name)
        given = getattr(args, f.name)
        assert type(given) is kind and given != f.default, f.name
    assert args.train_base is False and args.compile is True and args.base_seed == 3


def test_the_command_line_reports_every_bad_value_at_once(tmp_path, capsys):
    argv = ["--dense", "--out", str(tmp_path), "--steps", "0", "--lr", "-1",
            "--lr-schedule", "linear", "--mixed-precision", "fp8", "--base-seed", "-1",
            "--timestep-shift", "0", "--weight-decay", "-1", "--size", "15"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        recipe_main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    for expected in (
        "steps (0) must be a positive integer",
        "lr (-1.0) must be a positive number",
        "lr_schedule ('linear') must be one of constant, cosine",
        "mixed_precision ('fp8') must be one of auto, no, bf16, fp16",
        "base_seed (-1) must be a non-negative integer or null",
        "timestep_shift (0.0) must be a positive number",
        "weight_decay (-1.0) must be a number >= 0",
        "data.size (15) must be even",
    ):
        assert expected in err


def test_the_command_lines_defaults_are_the_configs():
    train, sla = config_from_args(build_parser().parse_args(["--dense", "--out", "x"]))
    assert train == TrainConfig() and sla is None
