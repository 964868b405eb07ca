"""ExperimentSpec -> Tune: the explicit trial list, seeded random draws, Optuna with the control."""

from __future__ import annotations

import yaml

from orchestrator.spec import parse_spec
from orchestrator.storage.records import trial_sla
from orchestrator.sweep import search_space
from orchestrator.sweep.run import expected_trials
from tests.paths import REPO


def spec_of(tmp_path, **changes):
    doc = {"name": "t", "model": "tiny", "train": {"steps": 2}}
    doc.update(changes)
    return parse_spec(doc, cwd=tmp_path, gpus_available=0)


def test_grid_is_the_cartesian_product_plus_the_control(tmp_path):
    spec = spec_of(tmp_path, sla={"topk": {"grid": [0.1, 0.2]}, "feature_map": {"grid": ["elu", "relu"]},
                                  "blkq": 16})  # fmt: skip
    trials = search_space.expand_trials(spec)
    assert len(trials) == 5 == expected_trials(spec)
    assert trials[-1] == {"sla": None, "control": True}
    combos = {(t["sla"]["topk"], t["sla"]["feature_map"]) for t in trials[:-1]}
    assert combos == {(0.1, "elu"), (0.1, "relu"), (0.2, "elu"), (0.2, "relu")}
    space = search_space.param_space(spec)
    assert space["trial"]["grid_search"] == trials
    assert search_space.search_alg(spec) is None
    assert trial_sla(spec.fixed_sla, trials[0]) == {"blkq": 16, **trials[0]["sla"]}
    assert trial_sla(spec.fixed_sla, trials[-1]) is None


def test_extra_trials_run_besides_the_grid_and_are_validated(tmp_path):
    import pytest

    from orchestrator.spec import SpecError

    spec = spec_of(tmp_path, sla={"topk": {"grid": [0.1, 0.2]}, "blkq": 16},
                   extra_trials=[{"topk": 0.1, "linear_scope": "none"}])  # fmt: skip
    trials = search_space.expand_trials(spec)
    assert len(trials) == 4 == expected_trials(spec)
    assert trials[2] == {"sla": {"topk": 0.1, "linear_scope": "none"}, "control": False}
    assert trial_sla(spec.fixed_sla, trials[2]) == {"blkq": 16, "topk": 0.1, "linear_scope": "none"}
    assert trials[-1]["control"]
    bad = [{"topk": 0.1, "linear_scope": "sparse"}, {"topq": 1}, "topk=0.1"]
    with pytest.raises(SpecError) as err:
        spec_of(tmp_path, sla={"topk": 0.1}, extra_trials=bad)
    msg = str(err.value)
    assert "extra_trials[0]: linear_scope ('sparse') must be one of marginal, all, none" in msg
    assert "extra_trials[1]: unknown key(s) topq" in msg
    assert "extra_trials[2] ('topk=0.1') must be a non-empty mapping" in msg
    with pytest.raises(
        SpecError, match=r"linear_scope none \(sparse-only\) has no trainable SLA weights"
    ):
        spec_of(tmp_path, sla={"topk": {"grid": [0.1, 0.2]}}, train={"steps": 2, "train_base": False},
                extra_trials=[{"topk": 0.1, "linear_scope": "none"}])  # fmt: skip
    with pytest.raises(
        SpecError, match="extra_trials need search.algorithm grid or random, not optuna"
    ):
        spec_of(tmp_path, sla={"topk": {"uniform": [0.05, 0.2]}}, search={"algorithm": "optuna", "num_samples": 2},
                extra_trials=[{"topk": 0.1}])  # fmt: skip


def test_random_draws_are_seeded_and_in_range(tmp_path):
    sla = {"topk": {"loguniform": [0.05, 0.5]}, "blkq": {"choice": [8, 16, 32]}}
    a = spec_of(tmp_path, sla=sla, search={"algorithm": "random", "num_samples": 8, "seed": 3})
    b = spec_of(tmp_path, sla=sla, search={"algorithm": "random", "num_samples": 8, "seed": 3})
    c = spec_of(tmp_path, sla=sla, search={"algorithm": "random", "num_samples": 8, "seed": 4})
    ta, tb, tc = (search_space.expand_trials(s) for s in (a, b, c))
    assert ta == tb and ta != tc
    assert len(ta) == 9 and ta[-1]["control"]
    for t in ta[:-1]:
        assert 0.05 <= t["sla"]["topk"] <= 0.5 and t["sla"]["blkq"] in (8, 16, 32)


def test_optuna_multi_objective_gets_the_control_first(tmp_path):
    spec = spec_of(
        tmp_path,
        sla={"topk": {"uniform": [0.05, 0.5]}},
        search={"algorithm": "optuna", "num_samples": 3,
                "objectives": [{"metric": "val/loss", "mode": "min"},
                               {"metric": "flops/attention_ratio", "mode": "min"}]},
    )  # fmt: skip
    searcher = search_space.search_alg(spec)
    assert search_space.tune_metric(spec) == (None, None)  # Optuna holds both objectives
    assert search_space.num_samples(spec) == 4 == expected_trials(spec)
    assert searcher.set_search_properties(None, None, search_space.param_space(spec))
    first = searcher.suggest("t0")
    assert first["trial"]["control"] is True
    second = searcher.suggest("t1")
    assert not second["trial"].get("control")
    assert 0.05 <= second["trial"]["sla"]["topk"] <= 0.5
    searcher.on_trial_complete("t0", {"val/loss": 1.0, "flops/attention_ratio": 1.0})  # ignored
    searcher.on_trial_complete("t1", {"val/loss": 0.9, "flops/attention_ratio": 0.3})


def test_shipped_random_sweep_expands(tmp_path):
    raw = yaml.safe_load((REPO / "experiments" / "block_sizes.yaml").read_text())
    spec = parse_spec(raw, cwd=tmp_path, gpus_available=0)
    trials = search_space.expand_trials(spec)
    assert len(trials) == 7 and sum(t["control"] for t in trials) == 1


def test_trial_actors_are_reused_only_without_a_scheduler(tmp_path):
    # A trial that ASHA stops is still inside TorchTrainer.fit(): Tune could not reset its actor
    # for the next trial in time and would fail that trial, so only FIFO sweeps reuse actors.
    from orchestrator.sweep.run import reuse_trial_actors

    sla = {"topk": {"grid": [0.1, 0.2]}}
    assert reuse_trial_actors(spec_of(tmp_path, sla=sla))
    assert not reuse_trial_actors(spec_of(tmp_path, sla=sla, scheduler="asha"))
