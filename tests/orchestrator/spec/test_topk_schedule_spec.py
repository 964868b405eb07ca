"""`sla.topk_schedule` in an experiment YAML: a fixed mapping or a grid of them, validated with
every other error of the file, expanded into trials whose SLAConfig carries the schedule."""

from __future__ import annotations

import pytest

from orchestrator.spec import SpecError, parse_spec
from orchestrator.storage.records import trial_sla
from orchestrator.sweep import search_space
from sla_kernel_glue import SLAConfig

RAMP = {"start": 1.0, "end": 0.1, "warmup_steps": 10}


def spec_of(tmp_path, sla, **changes):
    doc = {"name": "t", "model": "tiny", "train": {"steps": 20}, "sla": sla, **changes}
    return parse_spec(doc, cwd=tmp_path, gpus_available=0)


def configs(spec):
    trials = search_space.expand_trials(spec)
    return [
        None if t["control"] else SLAConfig.from_dict(trial_sla(spec.fixed_sla, t)) for t in trials
    ]


def test_a_grid_of_schedules_is_one_trial_each(tmp_path):
    cosine = {**RAMP, "end": 0.05, "shape": "cosine"}
    spec = spec_of(tmp_path, {"topk_schedule": {"grid": [RAMP, cosine]}, "blkq": 32})
    first, second, control = configs(spec)
    assert control is None
    assert (first.topk, first.topk_schedule.shape, first.blkq) == (0.1, "linear", 32)
    assert (second.topk, second.topk_schedule.shape) == (0.05, "cosine")  # topk: the end


def test_a_fixed_schedule_beside_a_grid(tmp_path):
    spec = spec_of(tmp_path, {"topk_schedule": RAMP, "feature_map": {"grid": ["softmax", "elu"]}})
    assert spec.fixed_sla["topk_schedule"] == RAMP
    sla = [c for c in configs(spec) if c is not None]
    assert [c.feature_map for c in sla] == ["softmax", "elu"]
    assert all(c.topk == 0.1 and c.topk_schedule.warmup_steps == 10 for c in sla)
    # a topk equal to the end is accepted too
    assert spec_of(tmp_path, {"topk": 0.1, "topk_schedule": RAMP}).fixed_sla["topk"] == 0.1


def test_every_bad_schedule_is_reported_with_the_files_other_errors(tmp_path):
    sla = {
        "topk_schedule": {"grid": [{**RAMP, "start": 1.5}, {**RAMP, "warmup_steps": -2},
                                   {**RAMP, "shape": "exp"}, 0.3]},
        "blkq": 0,
    }  # fmt: skip
    with pytest.raises(SpecError) as err:
        spec_of(tmp_path, sla, mode="sideways")
    msg = str(err.value)
    for part in (
        "topk_schedule.start (1.5) must be a number in (0, 1]",
        "topk_schedule.warmup_steps (-2) must be a non-negative integer",
        "topk_schedule.shape ('exp') must be one of linear, cosine",
        "topk_schedule (0.3) must be a mapping {start, end, warmup_steps, shape} or null",
        "blkq (0) must be a positive integer",
        "mode ('sideways')",
    ):
        assert part in msg, part


@pytest.mark.parametrize(
    ("sla", "message"),
    [
        ({"topk": 0.2, "topk_schedule": RAMP}, "topk (0.2) must equal topk_schedule.end (0.1)"),
        ({"topk": {"grid": [0.1, 0.3]}, "topk_schedule": RAMP},
         "the combination {'topk': 0.3, 'topk_schedule': {"),
        ({"topk_schedule": {"uniform": [0.1, 0.5]}}, "sla.topk_schedule.uniform: ranges need a numeric"),
        ({"topk_schedule": {"grid": [RAMP], "start": 1.0}}, "must have exactly one of grid"),
        ({"topk_schedule": {"start": 1.0, "end": 0.1}}, "missing: warmup_steps"),
    ],
)  # fmt: skip
def test_schedule_against_the_rest_of_the_space(tmp_path, sla, message):
    with pytest.raises(SpecError) as err:
        spec_of(tmp_path, sla)
    assert message in str(err.value)
