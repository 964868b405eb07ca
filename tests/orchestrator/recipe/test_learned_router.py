"""router "learned" and mix "alpha" in a tiny-preset trial: the router's projections and alpha
get gradients and move, the attention FLOPs count them, the checkpoint holds them and inference
loads them (hard top-k)."""

import pytest
import torch

from orchestrator.infer.model import load_checkpoint_model
from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
from orchestrator.recipe.train import TrialRecipe
from sla_kernel_glue import SLAConfig, attention_flops, read_sla_state

# 256 tokens in 8 key blocks of 32: topk 0.5 keeps 4 (the soft top-k's gradient needs more than
# one critical block per row with linear_scope "all": their logit gradients sum to 0 per row)
SLA = SLAConfig(topk=0.5, blkq=32, blkk=32, router="learned", mix="alpha")
STEPS = 3


def tiny(cache, **kw):
    return TrainConfig(
        **{"steps": STEPS, "batch_size": 2, "base_steps": 20, "base_cache_dir": str(cache),
           "log_every": 1, "checkpoint_every": STEPS, "sample_steps": 2, "warmup_steps": 1,
           "lr": 1e-2, "data": {"num_train": 32, "num_val": 2}, **kw}
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(base_cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("learned_router")
    recorder = RecordingCallback()
    run_trial(tiny(base_cache), SLA, workdir, callback=recorder)
    return recorder, workdir / f"checkpoint_{STEPS:06d}"


@pytest.mark.slow
def test_router_projections_and_alpha_train_and_are_saved(trained):
    _, checkpoint = trained
    data = read_sla_state(checkpoint / "sla_attention.pt")
    assert data["version"] == 3 and data["settings"] == SLA.to_dict()
    eye = torch.eye(32)
    for path, entry in data["layers"].items():
        state = entry["state"]
        assert state["router_q.weight"].dtype == torch.float32
        assert not torch.equal(state["router_q.weight"], eye), path
        assert not torch.equal(state["router_k.weight"], eye), path
        assert not torch.equal(state["alpha"], torch.ones(32)), path
        assert state["proj_l.weight"].abs().max() > 0, path  # alpha left 1, then proj_l trained


@pytest.mark.slow
def test_flops_count_the_learned_router(trained):
    recorder, _ = trained
    # tiny: 2 self-attention layers of 2 heads of 32; a step's batch is 2 clips
    per_step = attention_flops(2, 2, 256, 32, SLA, backward=True)
    fixed = attention_flops(2, 2, 256, 32, SLA.replace(router="fixed", mix="add"), backward=True)
    assert per_step.sla > fixed.sla
    for step, value in recorder.series("flops/attention"):
        assert value == pytest.approx(2 * per_step.sla, rel=1e-12), step


@pytest.mark.slow
def test_inference_loads_the_learned_parts_and_runs_the_hard_top_k(trained):
    _, checkpoint = trained
    loaded = load_checkpoint_model(checkpoint, attention="sla", device=torch.device("cpu"))
    assert loaded.sla == SLA
    saved = read_sla_state(checkpoint / "sla_attention.pt")["layers"]
    for path, sla in loaded.handle.layers.items():
        assert torch.equal(sla.router_q.weight, saved[path]["state"]["router_q.weight"])
        assert torch.equal(sla.alpha, saved[path]["state"]["alpha"])


@pytest.mark.slow
def test_learned_parts_take_their_own_learning_rate(base_cache, tmp_path):
    recipe = TrialRecipe(tiny(base_cache, steps=1, learned_lr_scale=10.0), SLA, tmp_path)
    try:
        recipe.setup()
        groups = recipe.optimizer.param_groups
        learned = {id(p) for s in recipe.handle.layers.values()
                   for n, p in s.named_parameters() if not n.startswith("proj_l.")}  # fmt: skip
        assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
        assert {id(p) for p in groups[1]["params"]} == learned and len(learned) == 2 * 3
        recipe.train()
        assert (
            groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"], rel=1e-12)
            and groups[0]["lr"] > 0
        )
    finally:
        recipe.cleanup()
    # the default keeps today's one group
    plain = TrialRecipe(tiny(base_cache, steps=1), SLA, tmp_path / "plain")
    try:
        plain.setup()
        assert len(plain.optimizer.param_groups) == 1
    finally:
        plain.cleanup()
