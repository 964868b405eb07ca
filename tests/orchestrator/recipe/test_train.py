"""run_trial end to end on the tiny preset (CPU): learning, metrics, FLOPs, checkpoints, CLI."""

import json
import math

import pytest
import torch

from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
from orchestrator.recipe.__main__ import main as cli_main
from orchestrator.spec.schema import METRIC_NAMES
from sla_kernel_glue import SLAConfig, attention_flops, read_sla_state

# every metric the spec lets "best" rank by, except the videos' (pipelines only)
METRICS = tuple(m for m in METRIC_NAMES if not m.startswith("val/video_"))
QUICK = ["--steps", "2", "--base-steps", "20", "--sample-steps", "2"]  # a trial in seconds
SLA = SLAConfig(topk=0.25, blkq=32, blkk=32)  # 256 tokens: 8 key blocks, 2 of them critical


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("base_models"))


def tiny(cache, **kw):
    # a small fixed val batch and few sampling steps keep each evaluation cheap on 2 CPU cores
    return TrainConfig(
        **{
            "base_steps": 20,
            "base_cache_dir": cache,
            "log_every": 1,
            "sample_steps": 4,
            "data": {"num_val": 4},
            **kw,
        }
    )


@pytest.fixture(scope="module")
def sla_run(cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sla_trial")
    recorder = RecordingCallback()
    final = run_trial(tiny(cache, steps=30), SLA, workdir, callback=recorder)
    return final, recorder, workdir


@pytest.mark.slow
def test_thirty_steps_lower_the_loss(sla_run):
    final, recorder, _ = sla_run
    losses = [v for _, v in recorder.series("train/loss")]
    assert len(losses) == 30 and losses[-1] == final["train/loss"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    val = recorder.series("val/loss")
    assert val[0][0] == 0 and val[-1][0] == 30 and val[-1][1] < val[0][1]


@pytest.mark.slow
def test_all_metrics_emitted_and_finite(sla_run):
    final, _, _ = sla_run
    for name in METRICS:
        assert name in final and math.isfinite(final[name]), name
    assert 0 < final["val/attn_rel_err"] < 1  # SLA is not dense attention, and not garbage
    assert final["sla/self_attn_fallback_calls"] == 0  # every self-attention call ran SLA
    assert final["sla/fallback_calls"] > 0  # Wan's cross-attention is dense, and counted


@pytest.mark.slow
def test_flops_match_attention_flops_for_the_shapes(sla_run):
    final, _, _ = sla_run
    # tiny: 2 self-attention layers, 2 heads of 32, 4 frames of 16x16 -> 256 tokens, batch 4
    per_layer = attention_flops(4, 2, 256, 32, SLA, backward=True)
    assert final["flops/attention"] == pytest.approx(2 * per_layer.sla, rel=1e-12)
    assert final["flops/attention_ratio"] == pytest.approx(per_layer.ratio, rel=1e-12)
    assert final["flops/attention_ratio"] < 1


@pytest.mark.slow
def test_checkpoint_directory_contents(sla_run):
    final, recorder, workdir = sla_run
    ((step, directory, metrics),) = recorder.checkpoints
    assert step == 30 and directory == workdir / "checkpoint_000030"
    trial = json.loads((directory / "trial.json").read_text())
    assert (
        trial["step"] == 30
        and trial["sla"] == SLA.to_dict()
        and trial["base_model"].startswith("tiny-")
    )
    assert trial["metrics"]["val/loss"] == metrics["val/loss"] == final["val/loss"]
    state = read_sla_state(directory / "sla_attention.pt")
    assert set(state["layers"]) == {"blocks.0.attn1", "blocks.1.attn1"}
    assert (directory / "model.safetensors").is_file()


@pytest.mark.slow
def test_dense_control(cache, tmp_path):
    final = run_trial(tiny(cache, steps=3), None, tmp_path, callback=RecordingCallback())
    assert final["val/attn_rel_err"] == 0.0 and final["sla/fallback_calls"] == 0.0
    assert final["flops/attention_ratio"] == 1.0
    assert final["flops/attention"] == 2 * attention_flops(4, 2, 256, 32, None, backward=True).dense
    assert (
        math.isfinite(final["val/sample_psnr"])
        and not (tmp_path / "checkpoint_000003" / "sla_attention.pt").exists()
    )


def model_state(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.mark.slow
def test_resume_continues_exactly(cache, tmp_path):
    config = tiny(
        cache, steps=6, checkpoint_every=3, grad_accum=2, lr_schedule="cosine", warmup_steps=2
    )
    run_trial(config, SLA, tmp_path / "straight", callback=RecordingCallback())
    resumed = RecordingCallback()
    run_trial(
        config,
        SLA,
        tmp_path / "resumed",
        callback=resumed,
        resume_from=tmp_path / "straight" / "checkpoint_000003",
    )
    assert [s for s, _ in resumed.metrics][0] == 4  # continued after step 3, no step-0 evaluation
    assert "val/loss" in resumed.metrics[0][1]  # reports carry the checkpoint's eval metrics
    a, b = (
        model_state(tmp_path / "straight" / "checkpoint_000006"),
        model_state(tmp_path / "resumed" / "checkpoint_000006"),
    )
    assert a.keys() == b.keys() and any(".sla.proj_l." in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run really trained: its weights moved away from the step-3 checkpoint
    mid = model_state(tmp_path / "straight" / "checkpoint_000003")
    assert not all(torch.equal(mid[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_with_other_sla_settings_is_refused(cache, tmp_path):
    run_trial(tiny(cache, steps=1), SLA, tmp_path / "a", callback=RecordingCallback())
    with pytest.raises(ValueError, match="cannot resume from .*SLA config"):
        run_trial(
            tiny(cache, steps=2),
            SLA.replace(topk=0.5),
            tmp_path / "b",
            callback=RecordingCallback(),
            resume_from=tmp_path / "a" / "checkpoint_000001",
        )


@pytest.mark.slow
def test_frozen_base_trains_only_proj_l(cache, tmp_path):
    run_trial(
        tiny(cache, steps=2, train_base=False, lr=1e-2), SLA, tmp_path, callback=RecordingCallback()
    )
    directory = tmp_path / "checkpoint_000002"
    trial = json.loads((directory / "trial.json").read_text())
    # a lean checkpoint: the base is named and fingerprinted, never copied
    assert not (directory / "model.safetensors").exists() and trial["checkpoint"] == "lean"
    assert trial["base"]["id"] == trial["base_model"] and trial["base"]["fingerprint"]
    layers = read_sla_state(directory / "sla_attention.pt")["layers"]
    proj = [t for layer in layers.values() for t in layer["state"].values()]
    assert proj and any(t.abs().sum() > 0 for t in proj)  # zero-initialised, now trained


@pytest.mark.slow
def test_cli_runs_one_trial(cache, tmp_path, capsys):
    assert (
        cli_main(
            [
                "--preset",
                "tiny",
                "--dense",
                *QUICK,
                "--base-cache-dir",
                cache,
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "step      2/2" in out and '"val/loss"' in out
    assert (tmp_path / "checkpoint_000002" / "trial.json").is_file()


def test_wrong_data_folder_through_the_recipe(cache, tmp_path):
    (tmp_path / "clips").mkdir()
    torch.save(torch.randn(3, 2, 8, 8), tmp_path / "clips" / "a.pt")  # 3 channels, tiny takes 4
    torch.save(torch.randn(4, 2, 8, 8), tmp_path / "clips" / "b.pt")
    config = tiny(cache, steps=1, data={"source": str(tmp_path / "clips"), "num_val": 1})
    with pytest.raises(ValueError, match="a.pt: 3 channels, the model takes 4"):
        run_trial(config, None, tmp_path / "out", callback=RecordingCallback())


@pytest.mark.slow
def test_two_processes_train_as_one_data_parallel_run(cache, tmp_path):
    """torchrun with 2 CPU processes (gloo): one DDP run, RNG state per rank, global-batch FLOPs."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "orchestrator.recipe",
        "--sla",
        "{'topk': 0.25, 'blkq': 32, 'blkk': 32}",
        *QUICK,
        "--base-cache-dir",
        cache,
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    directory = tmp_path / "checkpoint_000002"
    assert (directory / "random_states_0.pkl").is_file() and (
        directory / "random_states_1.pkl"
    ).is_file()
    metrics = json.loads((directory / "trial.json").read_text())["metrics"]
    per_layer = attention_flops(2 * 4, 2, 256, 32, SLA, backward=True)  # 2 ranks x batch 4
    assert metrics["flops/attention"] == pytest.approx(2 * per_layer.sla, rel=1e-12)


@pytest.mark.slow
def test_keep_checkpoints_prunes_after_the_callback(cache, tmp_path):
    seen = []

    class Check(RecordingCallback):
        def on_checkpoint(self, step, directory, metrics):
            seen.append(
                (step, sorted(p.name for p in directory.iterdir()))
            )  # complete while we look
            super().on_checkpoint(step, directory, metrics)

    run_trial(
        tiny(cache, steps=3, checkpoint_every=1, keep_checkpoints=2),
        None,
        tmp_path,
        callback=Check(),
    )
    assert [step for step, _ in seen] == [1, 2, 3] and all(
        "trial.json" in names for _, names in seen
    )
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == [
        "checkpoint_000002",
        "checkpoint_000003",
    ]


@pytest.mark.slow
def test_compiled_trial_trains_like_the_eager_one(cache, tmp_path):
    """train.compile: every block compiled after SLA injection; the same losses and checkpoint
    layout as eager (within compiler rounding), SLA still computing self-attention."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    config = tiny(cache, steps=2)
    eager = RecordingCallback()
    counters.clear()
    run_trial(config, SLA, tmp_path / "eager", callback=eager)
    assert counters["stats"]["unique_graphs"] == 0
    compiled = RecordingCallback()
    final = run_trial(config.replace(compile=True), SLA, tmp_path / "compiled", callback=compiled)
    assert counters["stats"]["unique_graphs"] > 0  # the blocks really ran compiled
    assert inductor_config.triton.mix_order_reduction  # the recipe's setting ended with it
    for (_, a), (_, b) in zip(
        eager.series("train/loss"), compiled.series("train/loss"), strict=True
    ):
        assert b == pytest.approx(a, rel=1e-3)
    assert final["val/loss"] == pytest.approx(eager.metrics[-1][1]["val/loss"], rel=1e-3)
    assert final["sla/self_attn_fallback_calls"] == 0.0 and final["val/attn_rel_err"] > 0
    a = model_state(tmp_path / "eager" / "checkpoint_000002")
    b = model_state(tmp_path / "compiled" / "checkpoint_000002")
    assert a.keys() == b.keys()  # compiled in place: no _orig_mod prefixes in the checkpoint
