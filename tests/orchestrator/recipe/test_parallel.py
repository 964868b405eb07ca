"""train.parallel: a sharded (fsdp, FSDP2) trial against the replicated (ddp) one, on 2 CPU
processes with real gloo process groups (torchrun), on the tiny preset's random weights.

Tolerance: both trials run the same float32 math on the same data; only the reduction order
differs (DDP all-reduces whole gradient buckets, FSDP2 reduce-scatters per block and sums the
clipping norm over shards), which moves a weight by about one float32 ulp per step (1.2e-7 seen
here). 1e-5 leaves room for that and is still 60x below what the steps themselves move a
weight (6e-4 from step 2 to 4), so a wrong gradient, a missing reduction or a lost shard fails.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from orchestrator.recipe import TrainConfig
from sla_kernel_glue import read_sla_state
from tests.paths import REPO

WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-5


def torchrun(out, cache, parallel, resume_from=None, pipeline=None, lora=None, compile=False):
    """The trial in 2 processes; {rank: its record} (parallel_trial.py writes them); on the
    tiny `pipeline` directory when given, a LoRA adapter of rank `lora` when given, its blocks
    torch.compiled with `compile`."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "-m", "tests.orchestrator.recipe.parallel_trial", str(out), str(cache), parallel,
        *([str(resume_from)] if resume_from else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PARALLEL_TRIAL_PIPELINE": str(pipeline or ""),
           "PARALLEL_TRIAL_LORA": str(lora or ""), "PARALLEL_TRIAL_COMPILE": "1" if compile else ""}  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {r: json.loads((out / f"rank_{r}.json").read_text()) for r in (0, 1)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("parallel"), tmp_path_factory.mktemp("bases")
    ddp = torchrun(root / "ddp", cache, "ddp")
    fsdp = torchrun(root / "fsdp", cache, "fsdp")
    resumed = torchrun(
        root / "resumed", cache, "fsdp", resume_from=root / "fsdp" / "checkpoint_000002"
    )
    return root, {"ddp": ddp, "fsdp": fsdp, "resumed": resumed}


def whole_model(directory, tmp_path):
    """The model's whole float32 state of a checkpoint: ddp's safetensors, fsdp's shards joined."""
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(directory / "model.safetensors"))
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = tmp_path / f"{directory.parent.name}_{directory.name}.pt"
    dcp_to_torch_save(directory / "sharded", target)
    return torch.load(target, weights_only=True)["model"]


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_a_two_expert_fsdp_trial_matches_its_ddp_trial(tmp_path):
    """Both experts of a Wan2.2 A14B-style pipeline, sharded and replicated: every step runs the
    same expert on both ranks (no collective left waiting), DDP lets the other expert sit out;
    the validation videos of the sharded trial score as the replicated trial's."""
    from tests.pipelines import tiny_pipeline

    pipeline = tiny_pipeline(tmp_path / "pipelines", "wan2.2-a14b")
    cache = tmp_path / "cache"
    ddp = torchrun(tmp_path / "ddp", cache, "ddp", pipeline=pipeline)
    fsdp = torchrun(tmp_path / "fsdp", cache, "fsdp", pipeline=pipeline)
    assert [v for _, v in fsdp[0]["losses"]] == pytest.approx(
        [v for _, v in ddp[0]["losses"]], rel=LOSS_RTOL
    )
    a = whole_model(tmp_path / "ddp" / "checkpoint_000004", tmp_path)
    b = whole_model(tmp_path / "fsdp" / "checkpoint_000004", tmp_path)
    assert any(k.startswith("transformer_2.blocks.0.attn1.sla.") for k in a)
    assert max_abs_diff(a, b) <= WEIGHT_ATOL
    assert fsdp[0]["local_numel"] < 0.6 * ddp[0]["local_numel"]  # each rank holds about half
    # validation videos under fsdp: every rank generates (collectively), the main one scores
    assert fsdp[0]["final"]["val/video_psnr"] == pytest.approx(
        ddp[0]["final"]["val/video_psnr"], abs=0.05
    )
    assert len(list((tmp_path / "fsdp" / "checkpoint_000004" / "validation").glob("*.mp4"))) == 2


@pytest.mark.slow
def test_a_lora_trial_on_a_sharded_frozen_base(tmp_path):
    """LoRA over the frozen base, sharded: the losses and the adapter of the ddp trial; the lean
    checkpoint's sharded/ holds only what trains (adapter, proj_l) and its LoRA file is whole;
    a resumed sharded LoRA trial continues like the straight one; infer reads the checkpoint."""
    from safetensors.torch import load_file

    from orchestrator.infer.model import rebuild_checkpoint_model
    from orchestrator.recipe.lora import LORA_FILE

    cache = tmp_path / "cache"
    ddp = torchrun(tmp_path / "ddp", cache, "ddp", lora=4)
    fsdp = torchrun(tmp_path / "fsdp", cache, "fsdp", lora=4)
    resumed = torchrun(tmp_path / "resumed", cache, "fsdp", lora=4,
                       resume_from=tmp_path / "fsdp" / "checkpoint_000002")  # fmt: skip
    losses = {k: [v for _, v in r[0]["losses"]] for k, r in
              (("ddp", ddp), ("fsdp", fsdp), ("resumed", resumed))}  # fmt: skip
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=LOSS_RTOL)
    assert losses["resumed"] == pytest.approx(losses["fsdp"][2:], rel=LOSS_RTOL)
    last = {k: tmp_path / k / "checkpoint_000004" for k in ("ddp", "fsdp", "resumed")}
    adapters = {k: load_file(str(d / LORA_FILE)) for k, d in last.items()}
    assert max_abs_diff(adapters["ddp"], adapters["fsdp"]) <= WEIGHT_ATOL
    assert max_abs_diff(adapters["fsdp"], adapters["resumed"]) <= WEIGHT_ATOL
    kept = whole_model(last["fsdp"], tmp_path)  # the sharded entries: what trains, nothing frozen
    assert kept and all(".lora_" in k or ".sla.proj_l." in k for k in kept)
    loaded = rebuild_checkpoint_model(last["fsdp"], attention="sla", device=torch.device("cpu"))
    assert loaded.handle is not None and loaded.source["step"] == 4


@pytest.mark.slow
def test_a_compiled_fsdp_trial_matches_the_eager_one(runs, tmp_path):
    """train.compile under fsdp: each block torch.compiled before it is sharded. Inductor's
    kernels round differently from eager ones, so the tolerance is 1e-4 (losses relative,
    weights absolute), still 12x below what the steps move a weight."""
    root, records = runs
    compiled = torchrun(tmp_path / "compiled", tmp_path / "cache", "fsdp", compile=True)
    assert [v for _, v in compiled[0]["losses"]] == pytest.approx(
        [v for _, v in records["fsdp"][0]["losses"]], rel=1e-4
    )
    a = whole_model(root / "fsdp" / "checkpoint_000004", tmp_path)
    b = whole_model(tmp_path / "compiled" / "checkpoint_000004", tmp_path)
    assert max_abs_diff(a, b) <= 1e-4


@pytest.mark.slow
def test_fsdp_trial_matches_the_ddp_trial(runs, tmp_path):
    root, records = runs
    ddp, fsdp = records["ddp"][0]["losses"], records["fsdp"][0]["losses"]
    assert [s for s, _ in fsdp] == [s for s, _ in ddp] == [1, 2, 3, 4]
    assert [v for _, v in fsdp] == pytest.approx([v for _, v in ddp], rel=LOSS_RTOL)
    a = whole_model(root / "ddp" / "checkpoint_000004", tmp_path)
    b = whole_model(root / "fsdp" / "checkpoint_000004", tmp_path)
    assert any(".sla.proj_l." in k for k in a)
    assert max_abs_diff(a, b) <= WEIGHT_ATOL
    moved = max_abs_diff(a, whole_model(root / "ddp" / "checkpoint_000002", tmp_path))
    assert moved > 20 * WEIGHT_ATOL  # the steps moved the weights far more than the tolerance


@pytest.mark.slow
def test_each_fsdp_rank_holds_about_half_of_the_parameters(runs):
    _, records = runs
    ddp, fsdp = records["ddp"], records["fsdp"]
    total = ddp[0]["local_numel"]  # a whole replica: the transformer and every proj_l
    assert ddp[1]["local_numel"] == total
    assert fsdp[0]["local_numel"] + fsdp[1]["local_numel"] == total  # each element once
    for rank in (0, 1):
        assert 0.45 * total <= fsdp[rank]["local_numel"] <= 0.55 * total


@pytest.mark.slow
def test_fsdp_checkpoint_has_shards_and_a_whole_sla_file(runs, tmp_path):
    root, _ = runs
    directory = root / "fsdp" / "checkpoint_000004"
    assert sorted(p.name for p in (directory / "sharded").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert not (directory / "model.safetensors").exists()  # no rank-0 "whole" model of shards
    model = whole_model(directory, tmp_path)
    layers = read_sla_state(directory / "sla_attention.pt")["layers"]
    assert sorted(layers) == ["blocks.0.attn1", "blocks.1.attn1"]
    for path, layer in layers.items():
        for name, tensor in layer["state"].items():
            assert tensor.dtype == torch.float32
            assert torch.equal(tensor, model[f"{path}.sla.{name}"])  # whole, not rank 0's shard


@pytest.mark.slow
def test_fsdp_resume_continues_like_the_straight_run(runs, tmp_path):
    root, records = runs
    straight = whole_model(root / "fsdp" / "checkpoint_000004", tmp_path)
    resumed = whole_model(root / "resumed" / "checkpoint_000004", tmp_path)
    assert max_abs_diff(straight, resumed) <= WEIGHT_ATOL
    assert [s for s, _ in records["resumed"][0]["losses"]] == [3, 4]
    assert [v for _, v in records["resumed"][0]["losses"]] == pytest.approx(
        [v for _, v in records["fsdp"][0]["losses"][2:]], rel=LOSS_RTOL
    )


def test_bad_parallel_is_refused_in_one_line():
    with pytest.raises(ValueError) as caught:
        TrainConfig(parallel="zero3")
    assert str(caught.value) == (
        "invalid training config: parallel ('zero3') must be one of ddp, fsdp"
    )


@pytest.mark.parametrize(
    "given, what",
    [
        ({"mixed_precision": "fp16"}, "mixed_precision fp16"),
    ],
)
def test_fsdp_refuses_what_it_does_not_support_yet(given, what):
    with pytest.raises(ValueError, match=re.escape(f"parallel (fsdp) does not support {what} yet")):
        TrainConfig(parallel="fsdp", **given)


def test_bf16_shards_gather_bf16_and_reduce_float32():
    from orchestrator.recipe.parallel import mixed_precision_policy

    policy = mixed_precision_policy("bf16")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert mixed_precision_policy("no").param_dtype is None  # float32 throughout
