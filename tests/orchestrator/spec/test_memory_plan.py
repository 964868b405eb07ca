"""The memory plan against measured peaks (docs/benchmarks.md) and the 14B sharding arithmetic;
the refusal before anything starts is in tests/orchestrator/sweep/test_memory_plan_cli.py."""

from __future__ import annotations

import pytest

from orchestrator.recipe.config import TrainConfig
from orchestrator.spec.memory_plan import estimate, lora_params, model_params
from orchestrator.spec.sizes import GIB, Shape

# The released transformer configs (Wan-AI/Wan2.1-T2V-*-Diffusers/transformer/config.json).
WAN_1_3B = Shape(hidden=1536, layers=30, ffn=8960, channels=16, text_dim=4096, heads=12)
WAN_14B = Shape(hidden=5120, layers=40, ffn=13824, channels=16, text_dim=4096, heads=40)
TOKENS_480 = 21 * (60 // 2) * (104 // 2)  # 81 frames of 480x832: latents 21 x 60 x 104, patch 2x2
TOKENS_720 = 21 * (90 // 2) * (160 // 2)  # 81 frames of 720x1280
TOLERANCE = 0.05  # relative, against a measured peak of memory allocated


def config(**kw) -> TrainConfig:
    base = {"model": "tiny", "mixed_precision": "bf16", "batch_size": 1}
    return TrainConfig.from_dict(base | kw)


def gib(train: TrainConfig, shape: Shape, tokens: int, workers: int = 1) -> float:
    return estimate(train, shape, tokens, workers=workers, label="x").total / GIB


def test_parameter_counts_match_the_released_model():
    assert model_params(WAN_1_3B) == 1_418_996_800  # WanTransformer3DModel, counted on the GPU
    assert lora_params(WAN_1_3B, 16) == 21_872_640  # the recipe's rank-16 adapter


def test_full_fine_tune_with_checkpointing_near_the_measured_peak():
    est = gib(config(gradient_checkpointing=True), WAN_1_3B, TOKENS_480)
    # 25.3 GiB in the compiled study on an H100, 26.5 eager on an H200
    assert abs(est - 25.3) / 25.3 < TOLERANCE, est
    assert abs(est - 26.5) / 26.5 < TOLERANCE, est


@pytest.mark.parametrize("measured", [113.9, 116.8])  # dense, SLA
def test_lora_without_checkpointing_near_the_measured_peak(measured):
    train = config(lora={"rank": 16}, gradient_checkpointing=False)
    est = gib(train, WAN_1_3B, TOKENS_480)
    assert abs(est - measured) / measured < TOLERANCE, est


@pytest.mark.parametrize("tokens", [TOKENS_480, TOKENS_720])
def test_14b_fits_80_gb_sharded_over_8_not_replicated(tokens):
    have = 80e9 / GIB  # an "80 GB" GPU, in GiB
    kw = {"gradient_checkpointing": True}
    assert gib(config(parallel="fsdp", **kw), WAN_14B, tokens, workers=8) < have
    assert gib(config(parallel="ddp", **kw), WAN_14B, tokens, workers=8) > have


def test_fsdp_divides_the_model_state_ddp_replicates():
    one = estimate(config(parallel="ddp"), WAN_14B, TOKENS_480, workers=8, label="ddp")
    eight = estimate(config(parallel="fsdp"), WAN_14B, TOKENS_480, workers=8, label="fsdp")
    assert eight.optimizer == one.optimizer // 8
    assert eight.activations == one.activations  # each worker runs its own batch


def test_sla_only_trains_proj_l():
    full = estimate(config(), WAN_1_3B, TOKENS_480, workers=1, label="full")
    sla = estimate(config(train_base=False), WAN_1_3B, TOKENS_480, workers=1, label="sla")
    assert sla.optimizer == 8 * 30 * (128 * 128 + 128)
    assert sla.weights == full.weights and sla.activations == full.activations


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    from tests.pipelines import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("pipelines"), "wan2.2-a14b")


def test_two_experts_hold_both_and_train_what_experts_names(a14b):
    def plan(**kw):
        train = TrainConfig.from_dict({"model": str(a14b), "mixed_precision": "bf16",
                                       "batch_size": 1, "parallel": "fsdp",
                                       "gradient_checkpointing": True,
                                       "data": {"frames": 9, "size": 32}, **kw})  # fmt: skip
        return estimate(train, WAN_14B, TOKENS_480, workers=8, label="x")

    one = estimate(
        config(parallel="fsdp", gradient_checkpointing=True),
        WAN_14B,
        TOKENS_480,
        workers=8,
        label="one",
    )
    both, low = plan(), plan(experts="low_noise")
    gathered = 2 * 2 * (8 * 5120**2 + 2 * 5120 * 13824 + 21 * 5120 + 13824)  # two bf16 blocks
    assert both.weights - gathered == pytest.approx(2 * (one.weights - gathered), rel=1e-6)
    assert low.weights == both.weights - 4 * 40 * (128 * 128 + 128) // 8  # one expert's proj_l
    assert both.optimizer == pytest.approx(2 * one.optimizer, rel=1e-6)
    assert low.optimizer == one.optimizer
    assert both.activations == low.activations == one.activations  # a step runs one expert
    # 74.4 GiB at 480x832x81 over 8: the A14B full fine-tune of both experts fits 80 GB, barely
    assert both.total < 80e9 < plan(parallel="ddp").total


def test_a_distill_teacher_is_counted_only_where_it_is_a_copy():
    """A full fine-tune's teacher is one frozen copy in the autocast dtype (bf16: 2 bytes a
    parameter, 2.6 GiB at 1.3B, 26.6 GiB at 14B); LoRA's and train_base false's is the trial's
    own weights, so nothing more."""
    for shape, expect in ((WAN_1_3B, 2.64), (WAN_14B, 26.61)):
        plain = estimate(config(), shape, TOKENS_480, workers=1, label="fm")
        taught = estimate(config(objective="distill"), shape, TOKENS_480, workers=1, label="d")
        assert taught.teacher == 2 * model_params(shape)
        assert round(taught.teacher / GIB, 2) == expect
        assert taught.total - plain.total == taught.teacher and plain.teacher == 0
    for kw in ({"lora": {"rank": 16}}, {"train_base": False}):
        taught = estimate(config(objective="distill", **kw), WAN_1_3B, TOKENS_480, workers=1,
                          label="d")  # fmt: skip
        assert taught.teacher == 0
    fp32 = estimate(config(objective="distill", mixed_precision="no"), WAN_1_3B, TOKENS_480,
                    workers=1, label="d")  # fmt: skip
    assert fp32.teacher == 4 * model_params(WAN_1_3B)
