"""Training settings in the search space (`train.lr: {grid: [...]}`, `train.lora.rank`): parsed
and validated like the SLA fields, expanded into trials, applied to each trial's TrainConfig."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.recipe import TrainConfig
from orchestrator.recipe.config import LoraConfig
from orchestrator.recipe.config_fields import is_section
from orchestrator.spec import SpecError, parse_spec
from orchestrator.spec.search import split_train_space
from orchestrator.storage.records import trial_train
from orchestrator.sweep import search_space
from orchestrator.sweep.run import expected_trials

LORA = {"rank": 4}


def spec_of(tmp_path, train, sla=None, **changes):
    doc = {
        "name": "t",
        "model": "tiny",
        "train": train,
        "sla": sla or {"topk": {"grid": [0.1, 0.2]}},
    }
    doc.update(changes)
    return parse_spec(doc, cwd=tmp_path, gpus_available=0)


def test_lr_and_topk_are_searched_together(tmp_path):
    spec = spec_of(tmp_path, {"steps": 2, "lr": {"grid": [1.0e-4, 1.0e-3]},
                              "lora": {"rank": {"grid": [2, 8]}}})  # fmt: skip
    assert [p.field for p in spec.train_space] == ["train.lr", "train.lora.rank"]
    assert spec.train["lr"] == 1.0e-4 and spec.train["lora"] == {"rank": 2}  # the control's values
    trials = search_space.expand_trials(spec)
    assert len(trials) == 2 * 2 * 2 + 1 == expected_trials(spec)
    chosen = {(t["sla"]["topk"], t["train"]["lr"], t["train"]["lora.rank"]) for t in trials[:-1]}
    assert len(chosen) == 8
    assert trials[-1] == {"sla": None, "control": True, "train": {"lr": 1.0e-4, "lora.rank": 2}}
    config = TrainConfig.from_dict(trial_train(spec.train, trials[3]))
    assert (config.lr, config.lora.rank) == (
        trials[3]["train"]["lr"],
        trials[3]["train"]["lora.rank"],
    )
    assert spec.train["lora"] == {"rank": 2}, "trial_train must not change the spec's own values"


def test_every_bad_training_entry_is_reported_at_once(tmp_path):
    train = {
        "steps": {"grid": [2, 0]},  # 0 steps: TrainConfig refuses it
        "lr": {"grid": [1.0e-4, -1.0]},  # negative
        "warmup_steps": {"uniform": [1, 4]},  # an integer: no range
        "batch_size": {"grid": [1, 2]},  # not searchable: the base is trained with it
        "lr_schedule": ["constant", "cosine"],  # a list without a kind
        "lora": {**LORA, "dropout": {"grid": ["a"]}},  # not a number
    }
    with pytest.raises(SpecError) as err:
        spec_of(tmp_path, train)
    msg = str(err.value)
    assert "train.warmup_steps.uniform: train.warmup_steps is an integer; use {grid: [...]}" in msg
    assert (
        "train.batch_size cannot be searched; searchable training settings: train.steps, "
        "train.objective, train.flow_weight, train.lr, train.warmup_steps, train.lr_schedule, "
        "train.weight_decay, train.lora.rank, train.lora.alpha, train.lora.dropout" in msg
    )
    assert "train.lr_schedule: a list needs a kind, e.g. {grid: ['constant', 'cosine']}" in msg
    assert "train.lora.dropout: 'a' is not a number" in msg
    # the values themselves are checked by TrainConfig, with the rest of the section
    with pytest.raises(SpecError) as err:
        spec_of(tmp_path, {"steps": {"grid": [2, 0]}, "lr": {"grid": [1.0e-4, -1.0]}})
    msg = str(err.value)
    assert "train.steps = 0" in msg and "steps (0) must be a positive integer" in msg
    assert "train.lr = -1.0" in msg


def test_grid_search_refuses_a_training_range_and_random_search_draws_it(tmp_path):
    lr = {"loguniform": [1.0e-5, 1.0e-3]}
    with pytest.raises(SpecError, match="train.lr: loguniform needs search.algorithm random"):
        spec_of(tmp_path, {"steps": 2, "lr": lr})
    spec = spec_of(tmp_path, {"steps": 2, "lr": lr}, sla={"topk": 0.1},
                   search={"algorithm": "random", "num_samples": 3, "seed": 1})  # fmt: skip
    trials = search_space.expand_trials(spec)
    draws = [t["train"]["lr"] for t in trials[:-1]]
    assert len(set(draws)) == 3 and all(1.0e-5 <= v <= 1.0e-3 for v in draws)
    assert trials[-1]["train"]["lr"] == pytest.approx(1.0e-4)  # the range's geometric middle
    assert draws == [t["train"]["lr"] for t in search_space.expand_trials(spec)[:-1]]  # seeded


def test_optuna_samples_training_settings_and_the_control_comes_first(tmp_path):
    spec = spec_of(tmp_path, {"steps": 2, "lr": {"loguniform": [1.0e-5, 1.0e-3]}},
                   search={"algorithm": "optuna", "num_samples": 2})  # fmt: skip
    space = search_space.param_space(spec)["trial"]
    assert set(space) == {"sla", "train", "control"} and set(space["train"]) == {"lr"}
    searcher = search_space.search_alg(spec)
    first = searcher.suggest("control-trial")
    assert first["trial"]["control"] and first["trial"]["train"] == {"lr": pytest.approx(1.0e-4)}


def test_a_topk_schedule_longer_than_the_fewest_steps_is_refused_before_ray(tmp_path):
    schedule = {"start": 1.0, "end": 0.25, "warmup_steps": 4}
    spec_of(tmp_path, {"steps": 4}, sla={"topk_schedule": schedule})  # ends on the last step
    with pytest.raises(SpecError) as err:
        spec_of(tmp_path, {"steps": {"grid": [3, 6]}}, sla={"topk_schedule": schedule})
    message = (
        "sla.topk_schedule.warmup_steps (4) is more than train.steps (3): training would stop "
        "at topk 0.4375, short of the end (0.25) that inference runs at; lower warmup_steps or "
        "raise steps"
    )  # the recipe's own check (schedule_error), reported once
    assert str(err.value).count(message) == 1
    assert str(err.value).count("warmup_steps (4)") == 1


def test_searchability_is_the_fields_declaration():
    """A training setting is searchable exactly when TrainConfig (LoraConfig for lora.*) declares
    it so; a range is taken where its declared type is float, refused for the others."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if not is_section(f)}
    fields.update({f"lora.{f.name}": f for f in dataclasses.fields(LoraConfig)})
    declared = {key for key, f in fields.items() if f.metadata["searchable"]}
    assert declared == {"steps", "objective", "flow_weight", "lr", "warmup_steps", "lr_schedule",
                        "weight_decay", "lora.rank", "lora.alpha", "lora.dropout"}  # fmt: skip
    for key, f in fields.items():
        errors: list[str] = []
        split_train_space(nested(key, {"grid": [f.default, "other"]}), errors)
        assert any("cannot be searched" in e for e in errors) is (key not in declared), key
    floats = {"flow_weight", "lr", "weight_decay", "lora.alpha", "lora.dropout"}
    for key in declared:
        errors = []
        split_train_space(nested(key, {"uniform": [0.1, 0.2]}), errors)
        assert (not errors) is (key in floats), (key, errors)


def nested(key: str, entry: dict) -> dict:
    """`train:` with entry at key ("lora.rank" inside lora)."""
    section, _, name = key.rpartition(".")
    return {section: {name: entry}} if section else {name: entry}
