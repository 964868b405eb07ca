"""topk schedules: the value at each step, validation, the layers moved along, the state file."""

import json
import math

import pytest
import torch

from sla_kernel_glue import (
    SLAConfig,
    SLAStateError,
    TopkSchedule,
    apply_sla,
    attention_flops,
    load_sla_state,
    read_sla_state,
    save_sla_state,
)

from .test_injection_wan import DENSE_EQUIVALENT, SPARSE, run, tiny_wan, wan_inputs

# 32 tokens in 2 key blocks: topk 1.0 keeps both (dense-equivalent), 0.5 keeps one (SPARSE)
RAMP = {"start": 1.0, "end": 0.5, "warmup_steps": 4}
SCHEDULED = SLAConfig.from_dict({**SPARSE.to_dict(), "topk_schedule": RAMP})


def linear(start, end, warmup, step):
    return start + (end - start) * min(step, warmup) / warmup


def test_linear_goes_from_start_to_end_then_stays():
    s = TopkSchedule(start=1.0, end=0.2, warmup_steps=4)
    assert s.topk(0) == 1.0 and s.topk(4) == 0.2 and s.topk(5) == s.topk(1000) == 0.2  # exact ends
    for step in range(1, 4):
        assert s.topk(step) == pytest.approx(linear(1.0, 0.2, 4, step), rel=1e-12)
    assert s.topk(2) == pytest.approx(0.6, rel=1e-12)


def test_cosine_is_half_a_cosine_between_the_same_ends():
    s = TopkSchedule(start=1.0, end=0.2, warmup_steps=4, shape="cosine")
    assert s.topk(0) == 1.0 and s.topk(4) == s.topk(9) == 0.2
    for step in range(1, 4):
        expected = 1.0 - 0.8 * (1 - math.cos(math.pi * step / 4)) / 2
        assert s.topk(step) == pytest.approx(expected, rel=1e-12)
    assert s.topk(2) == pytest.approx(0.6, rel=1e-12)  # the middle is the linear one's
    # slower than the line at first, faster later
    assert s.topk(1) > linear(1.0, 0.2, 4, 1) and s.topk(3) < linear(1.0, 0.2, 4, 3)


def test_a_rising_schedule_and_warmup_zero():
    rising = TopkSchedule(start=0.1, end=0.5, warmup_steps=2)
    assert [rising.topk(s) for s in (0, 2, 3)] == [0.1, 0.5, 0.5]
    assert rising.topk(1) == pytest.approx(0.3, rel=1e-12)
    for shape in ("linear", "cosine"):
        now = TopkSchedule(start=1.0, end=0.05, warmup_steps=0, shape=shape)
        assert [now.topk(s) for s in (0, 1, 7)] == [0.05, 0.05, 0.05]  # end from the start
    with pytest.raises(ValueError, match=r"step \(-1\) must be a non-negative integer"):
        rising.topk(-1)


def test_config_topk_is_the_end_and_at_step_is_a_fixed_config():
    c = SLAConfig.from_dict({"topk_schedule": {**RAMP, "shape": "cosine"}, "blkq": 16})
    assert c.topk == 0.5 and c.topk_schedule == TopkSchedule(1.0, 0.5, 4, "cosine")
    assert c == SLAConfig.from_dict(
        {"topk": 0.5, "topk_schedule": {**RAMP, "shape": "cosine"}, "blkq": 16}
    )
    assert c.topk_at(0) == 1.0 and c.topk_at(4) == 0.5
    assert c.at_step(0) == SLAConfig(topk=1.0, blkq=16) and c.at_step(10) == SLAConfig(
        topk=0.5, blkq=16
    )
    assert SPARSE.topk_at(3) == 0.5 and SPARSE.at_step(3) is SPARSE
    assert hash(c) == hash(SLAConfig.parse(json.dumps(c.to_dict())))  # JSON round trip, hashable
    assert c.to_dict()["topk_schedule"] == {**RAMP, "shape": "cosine"}
    assert "topk_schedule" not in SPARSE.to_dict()  # a fixed topk's dict is as it always was
    # parse over another config: a new schedule brings its own end
    assert SLAConfig.parse({"topk_schedule": RAMP}, over=SLAConfig(topk=0.1)).topk == 0.5


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({**RAMP, "start": 0}, r"topk_schedule.start \(0\) must be a number in \(0, 1\]"),
        ({**RAMP, "start": 1.5}, r"topk_schedule.start \(1.5\) must be a number in \(0, 1\]"),
        ({**RAMP, "end": -0.1}, r"topk_schedule.end \(-0.1\) must be a number in \(0, 1\]"),
        ({**RAMP, "end": True}, r"topk_schedule.end \(True\) must be a number"),
        ({**RAMP, "warmup_steps": -1}, r"warmup_steps \(-1\) must be a non-negative integer"),
        ({**RAMP, "warmup_steps": 2.5}, r"warmup_steps \(2.5\) must be a non-negative integer"),
        ({**RAMP, "shape": "exp"}, r"topk_schedule.shape \('exp'\) must be one of linear, cosine"),
        ({**RAMP, "steps": 3}, r"unknown topk_schedule key 'steps'; allowed: start, end"),
        ({"start": 1.0}, r"needs start, end and warmup_steps \(missing: end, warmup_steps\)"),
        (0.1, r"topk_schedule \(0.1\) must be a mapping \{start, end, warmup_steps, shape\}"),
        ([1.0, 0.1, 10], r"topk_schedule \(\[1.0, 0.1, 10\]\) must be a mapping"),
    ],
)
def test_every_bad_schedule_has_its_own_error(schedule, message):
    with pytest.raises(ValueError, match=message) as exc:
        SLAConfig.from_dict({"topk_schedule": schedule})
    assert "\n" not in str(exc.value)


def test_schedule_against_topk_and_kl():
    with pytest.raises(
        ValueError, match=r"topk \(0.1\) must equal topk_schedule.end \(0.5\) or be left out"
    ):
        SLAConfig.from_dict({"topk": 0.1, "topk_schedule": RAMP})
    with pytest.raises(ValueError, match=r"largest topk \+ kl \(0.9 \+ 0.2\) must not exceed 1"):
        SLAConfig.from_dict({"kl": 0.2, "topk_schedule": {**RAMP, "start": 0.9}})


def test_all_errors_at_once():
    bad = {"start": 2, "end": 0, "warmup_steps": -3, "shape": "step", "x": 1}
    with pytest.raises(ValueError) as exc:
        SLAConfig.from_dict({"topk_schedule": bad, "blkq": 0, "feature_map": "tanh"})
    message = str(exc.value)
    for part in ("start (2)", "end (0)", "warmup_steps (-3)", "shape ('step')", "key 'x'",
                 "blkq (0)", "feature_map ('tanh')"):  # fmt: skip
        assert part in message, part
    assert "topk (" not in message  # an invalid end is not also reported as topk's


def test_layers_start_at_the_end_and_follow_set_step():
    inputs = wan_inputs()
    model = tiny_wan()
    handle = apply_sla(model, SCHEDULED)
    assert handle.topk == 0.5 and all(s.config == SPARSE for s in handle.layers.values())
    end_out = run(model, inputs)
    sparse = tiny_wan()
    apply_sla(sparse, SPARSE)
    assert torch.equal(end_out, run(sparse, inputs))  # same config, same code path
    assert handle.set_step(0) == 1.0 and handle.topk == 1.0
    dense = tiny_wan()
    apply_sla(dense, DENSE_EQUIVALENT)
    assert torch.equal(run(model, inputs), run(dense, inputs))  # same config, same code path
    handle.set_step(2)
    assert handle.topk == pytest.approx(0.75, rel=1e-12)
    assert handle.set_step(4) == 0.5 and torch.equal(run(model, inputs), end_out)


def test_state_file_records_the_step_topk_and_loads_at_the_end(tmp_path):
    model = tiny_wan()
    handle = apply_sla(model, SCHEDULED)
    handle.set_step(1)
    save_sla_state(handle, tmp_path)
    data = read_sla_state(tmp_path / "sla_attention.pt")
    assert data["topk"] == SCHEDULED.topk_at(1) == pytest.approx(0.875, rel=1e-12)
    assert data["settings"] == SCHEDULED.to_dict()  # topk: the end; the schedule in full
    fresh = apply_sla(tiny_wan(), SLAConfig.from_dict(data["settings"]))
    assert load_sla_state(fresh, tmp_path) and fresh.topk == 0.5  # a loader runs at the end
    fixed = apply_sla(tiny_wan(), SPARSE)  # same end, no schedule: another config
    with pytest.raises(SLAStateError, match="topk_schedule .file .*running None"):
        load_sla_state(fixed, tmp_path)


def test_state_file_with_a_bad_topk_is_refused(tmp_path):
    model = tiny_wan()
    save_sla_state(apply_sla(model, SPARSE), tmp_path)
    path = tmp_path / "sla_attention.pt"
    data = torch.load(path, weights_only=True)
    assert data["topk"] == 0.5
    torch.save({**data, "topk": 1.5}, path)
    with pytest.raises(SLAStateError, match=r"topk \(1.5\) must be a number in \(0, 1\]"):
        read_sla_state(path)


def test_flops_follow_the_step_topk():
    # 256 tokens in 8 key blocks of 32: topk 1.0 -> 8 critical blocks, 0.25 -> 2
    c = SLAConfig.from_dict({"blkq": 32, "blkk": 32, "topk_schedule": {**RAMP, "end": 0.25}})
    per_step = [attention_flops(4, 2, 256, 32, c.at_step(s), backward=True) for s in range(6)]
    assert [f.density for f in per_step] == [1.0, 0.75, 0.625, 0.375, 0.25, 0.25]
    assert per_step[-1] == attention_flops(
        4, 2, 256, 32, SLAConfig(topk=0.25, blkq=32, blkk=32), backward=True
    )
