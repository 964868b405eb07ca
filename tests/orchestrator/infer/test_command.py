"""`sla-sweep infer` on the best trial of a real smoke sweep: samples on disk, not noise, SLA
active (the handle's counters), logged to the trial's MLflow run; and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from safetensors.torch import load_file

from orchestrator.cli import main as cli_main
from orchestrator.infer.command import run_infer
from orchestrator.infer.samples import TENSOR_FILE
from orchestrator.infer.target import resolve_target
from orchestrator.report.table import best_row

pytestmark = pytest.mark.slow

NUM_SAMPLES = 3


@pytest.fixture(scope="module")
def inferred(smoke_sweep, tmp_path_factory):
    """infer on the smoke sweep directory: its best SLA trial, with SLA on, on the CPU."""
    _, outcome = smoke_sweep
    out = tmp_path_factory.mktemp("infer") / "best"
    result = run_infer(
        str(outcome.sweep_dir), out=out, num_samples=NUM_SAMPLES, seed=0, device="cpu"
    )
    return outcome, result


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two equally shaped tensors."""
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_infer_picks_the_best_sla_trial(inferred, smoke_sweep):
    spec, outcome = smoke_sweep
    _, result = inferred
    want = best_row([r for r in outcome.rows if r.sla is not None], spec.metric, spec.mode)
    assert result.summary["trial"] == want.trial_id
    assert result.summary["sla"]["topk"] == want.sla["topk"]
    assert result.summary["source"]["step"] == spec.train["steps"]  # the last checkpoint


def test_samples_are_png_grids_and_gifs(inferred):
    _, result = inferred
    summary = json.loads((result.out_dir / "samples.json").read_text())
    frames = summary["generation"]["frames"]
    assert summary["classes"] == [0, 1, 2]
    for i in range(NUM_SAMPLES):
        png = result.out_dir / f"clip{i:02d}_class{i}.png"
        gif = result.out_dir / f"clip{i:02d}_class{i}.gif"
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > image.height  # frames side by side
        with Image.open(gif) as image:
            assert image.format == "GIF" and image.n_frames == frames
    with Image.open(result.out_dir / "grid.png") as grid, Image.open(png) as one:
        assert grid.width == one.width and grid.height > NUM_SAMPLES * one.height  # a row per clip


def test_samples_differ_from_noise(inferred):
    _, result = inferred
    tensors = load_file(str(result.out_dir / TENSOR_FILE))
    clips, noise = tensors["clips"], tensors["noise"]
    assert clips.shape == noise.shape and torch.isfinite(clips).all()
    assert not torch.equal(clips, noise)
    # The smoke model is trained for a handful of steps, so its samples are far from clean digits,
    # but they carry the data's structure that noise lacks: the digits data is a dark canvas
    # (mostly -1) and every channel holds the same frames, so channels are strongly correlated.
    assert clips.mean() < noise.mean() - 0.3
    assert correlation(clips[:, 0], clips[:, 1]) > correlation(noise[:, 0], noise[:, 1]) + 0.1


def test_sla_was_active(inferred):
    _, result = inferred
    assert result.attention == "sla"
    assert result.sla_calls > 0
    assert result.fallbacks, "Wan's cross-attention should be counted as dense fallbacks"
    reasons = {reason for per_layer in result.fallbacks.values() for reason in per_layer}
    assert reasons == {"cross_attention"}
    assert all(path.endswith("attn2") for path in result.fallbacks)


def test_samples_logged_to_the_trial_run(inferred):
    outcome, result = inferred
    best = next(r for r in outcome.rows if r.trial_id == result.summary["trial"])
    assert result.run_id == best.run_id
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    logged = {a.path for a in client.list_artifacts(best.run_id, "samples/sla-seed0")}
    assert "samples/sla-seed0/clip00_class0.gif" in logged
    assert "samples/sla-seed0/samples.json" in logged
    # the artifacts lie beside the sqlite store, not in the test process's working directory
    store_dir = Path(outcome.tracking_uri[len("sqlite:///") :]).parent
    assert client.get_run(best.run_id).info.artifact_uri.startswith(store_dir.as_uri())


def test_same_seed_same_samples_other_seed_differs(inferred, tmp_path):
    outcome, result = inferred
    again = run_infer(str(outcome.sweep_dir), out=tmp_path / "again", num_samples=NUM_SAMPLES,
                      seed=0, device="cpu", log_to_mlflow=False)  # fmt: skip
    other = run_infer(str(outcome.sweep_dir), out=tmp_path / "other", num_samples=NUM_SAMPLES,
                      seed=1, device="cpu", log_to_mlflow=False)  # fmt: skip
    first = load_file(str(result.out_dir / TENSOR_FILE))["clips"]
    assert torch.equal(load_file(str(again.out_dir / TENSOR_FILE))["clips"], first)
    assert not torch.equal(load_file(str(other.out_dir / TENSOR_FILE))["clips"], first)


def test_run_id_and_checkpoint_resolve_to_the_same_trial(inferred):
    outcome, result = inferred
    by_dir = resolve_target(str(outcome.sweep_dir))
    by_run = resolve_target(result.run_id, tracking_uri=outcome.tracking_uri)
    by_parent = resolve_target(outcome.parent_run_id, tracking_uri=outcome.tracking_uri)
    by_checkpoint = resolve_target(str(by_dir.directory))
    assert by_run.directory == by_dir.directory == by_parent.directory == by_checkpoint.directory
    assert by_checkpoint.run_id == by_dir.run_id == result.run_id


def test_dense_attention_warns_loudly(inferred, tmp_path, capsys):
    outcome, result = inferred
    dense = run_infer(str(outcome.sweep_dir), out=tmp_path / "dense", num_samples=NUM_SAMPLES,
                      seed=0, device="cpu", attention="dense", log_to_mlflow=False)  # fmt: skip
    err = capsys.readouterr().err
    assert "WARNING" in err and "quality WILL DROP" in err
    assert dense.sla_calls == 0
    sla_clips = load_file(str(result.out_dir / TENSOR_FILE))["clips"]
    assert not torch.equal(load_file(str(dense.out_dir / TENSOR_FILE))["clips"], sla_clips)


def test_control_checkpoint_without_sla_file_is_refused(inferred, tmp_path, capsys):
    outcome, _ = inferred
    control = next(r for r in outcome.rows if r.sla is None)
    code = cli_main(["infer", str(outcome.sweep_dir), "--trial", control.trial_id, "--out",
                       str(tmp_path / "x"), "--device", "cpu", "--no-mlflow"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "no sla_attention.pt" in err and "--attention dense" in err
    assert not (tmp_path / "x").exists()
    # with --attention dense the control runs (full attention, no warning: it never had SLA)
    code = cli_main(["infer", str(outcome.sweep_dir), "--trial", control.trial_id, "--out",
                       str(tmp_path / "x"), "--device", "cpu", "--no-mlflow", "--attention", "dense"])  # fmt: skip
    assert code == 0
    assert "WARNING" not in capsys.readouterr().err
    assert (tmp_path / "x" / "clip00_class0.gif").is_file()


def test_sla_checkpoint_missing_its_sla_file_says_what_to_do(inferred, tmp_path, capsys):
    import shutil

    outcome, result = inferred
    broken = tmp_path / "checkpoint"
    shutil.copytree(result.summary["source"]["checkpoint"], broken)
    (broken / "sla_attention.pt").unlink()
    assert cli_main(["infer", str(broken), "--device", "cpu", "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        "no sla_attention.pt" in err and "weights are missing" in err and "--attention dense" in err
    )


def test_compiled_sampling_matches_eager_with_sla_on(inferred, tmp_path):
    """infer --compile: the blocks run compiled, SLA still computes every self-attention call, the
    samples equal the eager ones within compiler rounding, and the model's forwards are restored."""
    from torch._dynamo.utils import counters

    outcome, eager = inferred
    counters.clear()
    result = run_infer(
        str(outcome.sweep_dir), out=tmp_path / "compiled", num_samples=NUM_SAMPLES, seed=0,
        device="cpu", compile=True, log_to_mlflow=False,
    )  # fmt: skip
    assert counters["stats"]["unique_graphs"] > 0  # the blocks really ran compiled
    assert result.summary["compile"] is True and result.sla_calls == eager.sla_calls
    a = load_file(str(eager.out_dir / TENSOR_FILE))["clips"]
    b = load_file(str(result.out_dir / TENSOR_FILE))["clips"]
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
