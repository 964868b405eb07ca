"""Wan2.2 A14B's two experts: the pipeline's transformer_2 and boundary_ratio read and checked,
ExpertPair's routing, the timesteps each expert trains on and the config's checks (no training)."""

from __future__ import annotations

import shutil

import pytest
import torch

from orchestrator.models.experts import ExpertPair, sla_targets
from orchestrator.models.pipeline import PipelineError, read_pipeline
from orchestrator.models.wan_presets import load_local
from orchestrator.recipe.config import TrainConfig
from orchestrator.recipe.flow_matching import sample_timesteps
from orchestrator.recipe.timesteps import MARGIN, TimestepPlan, timestep_cdf
from sla_kernel_glue import SLAConfig, apply_sla
from tests.pipelines import edit_json, tiny_pipeline


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("pipelines"), "wan2.2-a14b")


def test_the_pipeline_reads_both_experts_and_where_they_switch(a14b):
    info = read_pipeline(a14b)
    assert info.experts == ("transformer", "transformer_2") and info.two_experts
    assert info.boundary_ratio == 0.875
    pair = load_local(a14b)
    assert isinstance(pair, ExpertPair) and pair.boundary_ratio == 0.875
    keys = pair.state_dict().keys()
    assert any(k.startswith("transformer_2.blocks.") for k in keys)
    assert any(k.startswith("transformer.blocks.") for k in keys)


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"boundary_ratio": None}, "boundary_ratio (None) must be a number between 0 and 1"),
        ({"boundary_ratio": 1.5}, "boundary_ratio (1.5) must be a number between 0 and 1"),
    ],
)
def test_a_bad_boundary_is_one_problem_line(a14b, tmp_path, damage, message):
    copy = shutil.copytree(a14b, tmp_path / "pipe")
    edit_json(copy / "model_index.json", **damage)
    with pytest.raises(PipelineError) as caught:
        read_pipeline(copy)
    assert caught.value.problems == [f"{copy / 'model_index.json'}: {message} when the pipeline"
                                     " has a transformer_2 (the timestep fraction where its"
                                     " experts switch)"]  # fmt: skip


def test_a_second_expert_of_another_shape_or_without_weights_is_refused(a14b, tmp_path):
    copy = shutil.copytree(a14b, tmp_path / "pipe")
    edit_json(copy / "transformer_2" / "config.json", text_dim=48)
    with pytest.raises(PipelineError, match=r"text_dim \(48\) must equal transformer's \(32\)"):
        read_pipeline(copy)
    shutil.rmtree(copy / "transformer_2")
    with pytest.raises(PipelineError, match=r"transformer_2/: missing; .* the low-noise expert"):
        read_pipeline(copy)


def test_each_sample_goes_to_the_expert_of_its_timestep(a14b):
    pair = load_local(a14b).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 3, 8, 8, generator=g)
    context = torch.randn(4, 32, 32, generator=g)
    t = torch.tensor([999.0, 100.0, 875.0, 874.0])  # 875 = 0.875 * 1000 is the high expert's
    with torch.no_grad():
        out = pair(x, t, encoder_hidden_states=context, return_dict=False)[0]
        high = pair.transformer(x[[0, 2]], t[[0, 2]], encoder_hidden_states=context[[0, 2]],
                                return_dict=False)[0]  # fmt: skip
        low = pair.transformer_2(x[[1, 3]], t[[1, 3]], encoder_hidden_states=context[[1, 3]],
                                 return_dict=False)[0]  # fmt: skip
    assert torch.equal(out[[0, 2]], high) and torch.equal(out[[1, 3]], low)  # the same calls


@pytest.mark.parametrize("sampling", ["logit_normal", "uniform"])
def test_each_expert_draws_only_its_timesteps_and_together_the_usual_ones(sampling):
    pair = ExpertPair(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), boundary_ratio=0.875)
    plans = {choice: TimestepPlan.of(pair, choice, sampling=sampling, shift=3.0, seed=7)
             for choice in ("both", "high_noise", "low_noise")}  # fmt: skip
    for step in range(40):
        assert plans["high_noise"].draw(64, torch.Generator().manual_seed(step), step, 0).min() \
            >= 0.875 + MARGIN  # fmt: skip
        assert plans["low_noise"].draw(64, torch.Generator().manual_seed(step), step, 0).max() \
            <= 0.875 - MARGIN  # fmt: skip
    below = timestep_cdf(0.875, sampling=sampling, shift=3.0)
    both = plans["both"]
    assert [s.share for s in both.spans] == pytest.approx([1 - below, below])
    chosen = [both.expert(step, 0).expert for step in range(4000)]
    assert chosen.count("transformer_2") / 4000 == pytest.approx(below, abs=0.03)
    # over many steps, both experts' draws are distributed as one transformer's
    mixed = torch.cat([both.draw(16, torch.Generator().manual_seed(s), s, 0) for s in range(2000)])
    usual = sample_timesteps(32000, generator=torch.Generator().manual_seed(1), sampling=sampling,
                             shift=3.0)  # fmt: skip
    quantiles = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    assert torch.allclose(mixed.quantile(quantiles), usual.quantile(quantiles), atol=0.02)


def test_one_transformer_draws_exactly_as_before():
    model = torch.nn.Linear(1, 1)
    plan = TimestepPlan.of(model, "both", sampling="logit_normal", shift=3.0, seed=0)
    drawn = plan.draw(8, torch.Generator().manual_seed(5), 3, 0)
    before = sample_timesteps(8, generator=torch.Generator().manual_seed(5),
                              sampling="logit_normal", shift=3.0)  # fmt: skip
    assert torch.equal(drawn, before)


def test_sla_goes_into_the_trained_experts_only(a14b):
    pair = load_local(a14b)
    layers = {}
    for choice in ("both", "low_noise"):
        handle = apply_sla(pair, SLAConfig(topk=0.5), targets=sla_targets(pair, choice))
        layers[choice] = sorted(handle.layers)
        handle.remove()
    assert layers["low_noise"] == ["transformer_2.blocks.0.attn1", "transformer_2.blocks.1.attn1"]
    assert len(layers["both"]) == 4 and set(layers["low_noise"]) < set(layers["both"])


def _config(model, **train):
    return {"model": str(model), "data": {"source": "digits", "frames": 9, "size": 32}, **train}


def test_the_config_checks_experts_against_the_pipeline(a14b, tmp_path_factory):
    one = tiny_pipeline(tmp_path_factory.mktemp("one"))
    with pytest.raises(
        ValueError,
        match=r"experts \('low_noise'\) chooses between a Wan2.2 A14B"
        r" pipeline's two experts; model .* has one transformer: drop experts",
    ):
        TrainConfig.from_dict(_config(one, experts="low_noise"))
    with pytest.raises(ValueError, match="lora on a two-expert pipeline .* is not supported yet"):
        TrainConfig.from_dict(_config(a14b, lora={"rank": 4}))
    with pytest.raises(ValueError, match=r"experts \('middle'\) must be one of both, high_noise"):
        TrainConfig.from_dict(_config(a14b, experts="middle"))
    assert TrainConfig.from_dict(_config(a14b, experts="high_noise")).experts == "high_noise"
