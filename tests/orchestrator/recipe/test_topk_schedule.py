"""A topk schedule in a tiny-preset trial: logged topk and FLOPs per step, the step's topk in its
checkpoints, resume mid-schedule bitwise, inference at the schedule's end."""

import json

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.infer.model import load_checkpoint_model
from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
from orchestrator.recipe.topk_schedule import schedule_error
from orchestrator.recipe.train import TrialRecipe
from sla_kernel_glue import SLAConfig, attention_flops, read_sla_state

# 256 tokens in 8 key blocks of 32: topk 1.0, 0.75, 0.5, 0.25 keep 8, 6, 4, 2 of them
SCHEDULE = {"start": 1.0, "end": 0.25, "warmup_steps": 3}
SLA = SLAConfig.from_dict({"blkq": 32, "blkk": 32, "topk_schedule": SCHEDULE})
STEPS = 4


def tiny(cache, **kw):
    return TrainConfig(
        **{"steps": STEPS, "batch_size": 2, "base_steps": 20, "base_cache_dir": str(cache),
           "log_every": 1, "checkpoint_every": 2, "sample_steps": 2, "warmup_steps": 1,
           "data": {"num_train": 32, "num_val": 2}, **kw}
    )  # fmt: skip


@pytest.fixture(scope="module")
def straight(base_cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("scheduled")
    recorder = RecordingCallback()
    run_trial(tiny(base_cache), SLA, workdir, callback=recorder)
    return recorder, workdir


@pytest.mark.slow
def test_logged_topk_and_flops_follow_the_schedule(straight):
    recorder, _ = straight
    topk = recorder.series("sla/topk")
    assert topk == [(s, SLA.topk_at(s)) for s in range(STEPS + 1)]
    assert [t for _, t in topk] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.25], rel=1e-12)
    # tiny: 2 self-attention layers of 2 heads of 32; a step's batch is 2 clips
    per_step = [attention_flops(2, 2, 256, 32, SLA.at_step(s), backward=True) for s in range(5)]
    flops = recorder.series("flops/attention")
    assert [s for s, _ in flops] == list(range(STEPS + 1))
    for (step, value), expected in zip(flops, per_step, strict=True):
        assert value == pytest.approx(2 * expected.sla, rel=1e-12), step
    ratios = [v for _, v in recorder.series("flops/attention_ratio")]
    assert ratios[0] > ratios[1] > ratios[2] > ratios[3] == ratios[4]
    mean = dict(recorder.series("flops/attention_mean"))[STEPS]
    assert mean == pytest.approx(2 * sum(f.sla for f in per_step[1:]) / STEPS, rel=1e-12)
    # the evaluations ran at the step's topk: at 1.0 every block is critical and proj_l is 0
    rel_err = dict(recorder.series("val/attn_rel_err"))
    assert rel_err[0] < 1e-5 < 1e-3 < rel_err[STEPS]


@pytest.mark.slow
def test_checkpoints_record_the_step_topk(straight):
    _, workdir = straight
    for step in (2, 4):
        directory = workdir / f"checkpoint_{step:06d}"
        trial = json.loads((directory / "trial.json").read_text())
        assert trial["sla"] == SLA.to_dict() and trial["sla"]["topk"] == 0.25
        assert trial["metrics"]["sla/topk"] == SLA.topk_at(step)
        state = read_sla_state(directory / "sla_attention.pt")
        assert state["topk"] == SLA.topk_at(step) and state["settings"] == SLA.to_dict()
    assert SLA.topk_at(2) == pytest.approx(0.5, rel=1e-12)  # mid-schedule


def sla_tensors(directory):
    layers = read_sla_state(directory / "sla_attention.pt")["layers"]
    return {f"{p}.{k}": v for p, entry in layers.items() for k, v in entry["state"].items()}


@pytest.mark.slow
def test_resume_mid_schedule_is_bitwise_exact(straight, base_cache, tmp_path):
    recorder, workdir = straight
    resumed = RecordingCallback()
    run_trial(tiny(base_cache), SLA, tmp_path, callback=resumed,
              resume_from=workdir / "checkpoint_000002")  # fmt: skip
    end_a, end_b = workdir / "checkpoint_000004", tmp_path / "checkpoint_000004"
    a, b = load_file(str(end_a / "model.safetensors")), load_file(str(end_b / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = sla_tensors(end_a), sla_tensors(end_b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def steady(metrics):  # every metric but the timings
        return {k: v for k, v in metrics.items() if not k.startswith("perf/")}

    straight_later = [(s, steady(m)) for s, m in recorder.metrics if s > 2]
    assert [(s, steady(m)) for s, m in resumed.metrics] == straight_later
    assert [s for s, _ in resumed.metrics] == [3, 4]


@pytest.mark.slow
def test_inference_runs_at_the_schedule_end(straight):
    _, workdir = straight
    loaded = load_checkpoint_model(
        workdir / "checkpoint_000002", attention="sla", device=torch.device("cpu")
    )  # trained up to topk 0.5 so far
    assert loaded.sla == SLA and loaded.handle.topk == 0.25
    assert {s.config for s in loaded.handle.layers.values()} == {SLA.at_step(STEPS)}


SHORT_TRIAL = (
    "sla.topk_schedule.warmup_steps (3) is more than train.steps (2): training would stop at "
    "topk 0.5, short of the end (0.25) that inference runs at; lower warmup_steps or raise steps"
)


def test_a_schedule_longer_than_the_trial_is_refused(base_cache, tmp_path):
    with pytest.raises(ValueError) as err:
        TrialRecipe(tiny(base_cache, steps=2), SLA, tmp_path)
    assert str(err.value) == SHORT_TRIAL
    assert schedule_error(SLA.topk_schedule, 2) == SHORT_TRIAL  # the spec's check is this one
    assert schedule_error(SLA.topk_schedule, 3) is None and schedule_error(None, 0) is None


def test_the_recipe_keeps_the_sla_config_it_is_given(base_cache, tmp_path):
    assert TrialRecipe(tiny(base_cache), SLA, tmp_path).sla is SLA
    for loose in (SLA.to_dict(), "{'topk': 0.25}"):
        with pytest.raises(TypeError, match="sla must be an SLAConfig or None, got"):
            TrialRecipe(tiny(base_cache), loose, tmp_path)
