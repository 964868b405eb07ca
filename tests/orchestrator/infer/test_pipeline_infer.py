"""`sla-sweep infer` on a pipeline trial: stock WanPipeline with the fine-tuned transformer and SLA
on, one decodable MP4 per prompt of the requested shape, fixed by the seed, logged to the trial's
MLflow run; and its refusals (one line on stderr, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import pytest
import torch
from safetensors.torch import load_file

from orchestrator.cli import main as cli_main
from orchestrator.infer.pipeline_videos import FRAMES_FILE, SUMMARY_FILE
from orchestrator.recipe import TrainConfig, run_trial
from sla_kernel_glue import SLAConfig, SLAHandle

pytestmark = pytest.mark.slow  # every test reads a trained trial's checkpoint

PROMPT = "a handwritten digit seven"
SLA = SLAConfig(topk=0.5, blkq=16, blkk=16)


def train_pipeline_trial(pipeline: Path, tmp: Path) -> Path:
    """A real two-step SLA trial on the tiny pipeline (no Ray); its last checkpoint."""
    train = TrainConfig.from_dict({
        "model": str(pipeline), "steps": 2, "batch_size": 2, "log_every": 1, "sample_steps": 2,
        "warmup_steps": 1, "validation": {"prompts": [PROMPT], "steps": 2},
        "data": {"source": "digits", "frames": 9, "size": 32, "num_train": 6, "num_val": 2,
                 "cache_dir": str(tmp / "cache")},
    })  # fmt: skip
    run_trial(train, SLA, tmp / "work")
    return tmp / "work" / "checkpoint_000002"


@pytest.fixture(scope="module")
def checkpoint(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """The module's pipeline trial checkpoint (never modified: tests copy it to change it)."""
    return train_pipeline_trial(tiny_pipeline_dir, tmp_path_factory.mktemp("pipeline_trial"))


def infer(target: Path, out: Path, *args: str) -> int:
    """`sla-sweep infer TARGET --out OUT ARGS` on the CPU without MLflow; its exit status."""
    return cli_main(
        ["infer", str(target), "--out", str(out), "--device", "cpu", "--no-mlflow", *args]
    )


def decoded_mp4(path: Path) -> tuple[int, int, int]:
    """(frames, height, width) of an MP4, every frame decoded with PyAV."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return len(frames), frames[0].shape[0], frames[0].shape[1]


def one_error_line(capsys) -> str:
    """The one line on stderr (fails when there are more)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_prompt_gives_a_decodable_mp4_of_the_requested_shape_with_sla_on(checkpoint, tmp_path):
    out = tmp_path / "videos"
    args = ["--prompt", PROMPT, "--prompt", "two digits moving", "--frames", "5", "--size", "32",
            "48", "--steps", "2", "--seed", "1"]  # fmt: skip
    assert infer(checkpoint, out, *args) == 0
    mp4s = sorted(out.glob("*.mp4"))
    assert [p.name for p in mp4s] == [
        "00_a-handwritten-digit-seven_seed1.mp4",
        "01_two-digits-moving_seed1.mp4",
    ]
    assert all(decoded_mp4(p) == (5, 32, 48) for p in mp4s)
    assert all(p.with_suffix(".png").is_file() for p in mp4s)  # the frame grids
    assert load_file(str(out / FRAMES_FILE))["frames"].shape == (2, 5, 3, 32, 48)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["sla_calls"] > 0 and summary["sla"]["topk"] == SLA.topk
    reasons = {r for per in summary["fallbacks"].values() for r in per}
    assert reasons == {"cross_attention"}  # only Wan's cross-attention ran dense
    assert summary["generation"]["prompts"] == [PROMPT, "two digits moving"]
    assert summary["max_text_len"] == 32  # the tiny pipeline's tokenizer limit, as in training


def test_same_seed_same_frames_other_seed_differs(checkpoint, tmp_path):
    runs = {"a": "4", "b": "4", "c": "5"}
    for name, seed in runs.items():
        assert infer(checkpoint, tmp_path / name, "--prompt", PROMPT, "--seed", seed) == 0
    a, b, c = (load_file(str(tmp_path / n / FRAMES_FILE))["frames"] for n in runs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bf16_precision_runs_the_transformer_under_autocast(checkpoint, tmp_path):
    """--precision bf16 (auto's choice on CUDA) computes the transformer in bf16 under autocast:
    close to the float32 frames (same weights, same noise) but not equal; auto is fp32 on the
    CPU."""
    for name, precision in (("auto", "auto"), ("fp32", "fp32"), ("bf16", "bf16")):
        assert infer(checkpoint, tmp_path / name, "--prompt", PROMPT, "--precision", precision) == 0
    frames = {
        n: load_file(str(tmp_path / n / FRAMES_FILE))["frames"] for n in ("auto", "fp32", "bf16")
    }
    precision = {
        n: json.loads((tmp_path / n / SUMMARY_FILE).read_text())["precision"] for n in frames
    }
    assert precision == {"auto": "fp32", "fp32": "fp32", "bf16": "bf16"}
    assert torch.equal(frames["auto"], frames["fp32"])
    assert not torch.equal(frames["bf16"], frames["fp32"])
    assert (frames["bf16"] - frames["fp32"]).abs().mean() < 0.02  # bf16 rounding, not another model


def test_without_prompt_the_trial_validation_settings_are_used(checkpoint, tmp_path):
    assert infer(checkpoint, tmp_path / "v") == 0
    generation = json.loads((tmp_path / "v" / SUMMARY_FILE).read_text())["generation"]
    assert generation["prompts"] == [PROMPT]
    assert (generation["frames"], generation["height"], generation["width"]) == (9, 32, 32)
    assert generation["steps"] == 2 and generation["guidance_scale"] == 5.0
    assert decoded_mp4(next((tmp_path / "v").glob("*.mp4"))) == (9, 32, 32)


def test_videos_are_logged_to_the_trial_run(checkpoint, tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking.mlflow_log import artifact_location

    sweep = tmp_path / "sweep"
    trial_dir = sweep / "trial_t1"
    shutil.copytree(checkpoint, trial_dir / checkpoint.name)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    # artifacts beside the store, as the sweep's recorder puts them (not in the working directory)
    experiment = client.create_experiment("pipe", artifact_location=artifact_location(uri))
    run_id = client.create_run(experiment).info.run_id
    (sweep / "sweep.json").write_text(json.dumps({"tracking_uri": uri}))
    row = {"trial_id": "t1", "sla": SLA.to_dict(), "checkpoint": str(trial_dir), "run_id": run_id}
    (sweep / "trials.json").write_text(json.dumps([row]))
    assert cli_main(["infer", str(sweep), "--trial", "t1", "--device", "cpu"]) == 0
    logged = {a.path for a in client.list_artifacts(run_id, "videos/sla-seed0")}
    assert "videos/sla-seed0/00_a-handwritten-digit-seven_seed0.mp4" in logged
    assert "videos/sla-seed0/videos.json" in logged
    assert (sweep / "samples" / "t1-sla-seed0" / FRAMES_FILE).is_file()  # the default --out


def test_sla_injected_but_never_called_is_refused(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SLAHandle, "sla_calls", lambda self: 0)
    assert infer(checkpoint, tmp_path / "v", "--prompt", PROMPT) == 2
    assert "no attention call ran through it" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


@pytest.fixture(scope="module")
def preset_checkpoint(tmp_path_factory) -> Path:
    """A real one-step SLA trial of the tiny preset (no pipeline: no VAE, no text encoder)."""
    tmp = tmp_path_factory.mktemp("preset_trial")
    train = TrainConfig(model="tiny", data={"num_train": 4, "num_val": 2}, steps=1, batch_size=2,
                        log_every=1, sample_steps=1, base_steps=1, warmup_steps=1,
                        base_cache_dir=str(tmp / "base"))  # fmt: skip
    run_trial(train, SLA, tmp / "work")
    return tmp / "work" / "checkpoint_000001"


def test_prompt_on_a_preset_trial_is_one_line(preset_checkpoint, tmp_path, capsys):
    assert infer(preset_checkpoint, tmp_path / "v", "--prompt", PROMPT, "--frames", "9") == 2
    err = one_error_line(capsys)
    assert "--prompt, --frames" in err and "pipeline" in err and "'tiny'" in err
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["--size", "30"], "--size (30) must be a multiple of 16"),
        (["--size", "32", "40"], "--size (40) must be a multiple of 16"),
        (["--frames", "8"], "--frames (8) must be 4k+1"),
        (["--size", "32", "32", "32"], "--size takes N or H W, got 3 values"),
        (["--num-samples", "2"], "--num-samples (2) is for preset trials"),
        (["--prompt", " "], "--prompt (' ') must be a non-empty string"),
    ],
)
def test_bad_video_options_are_one_line(checkpoint, tmp_path, capsys, args, wanted):
    assert infer(checkpoint, tmp_path / "v", *args) == 2
    assert wanted in one_error_line(capsys)
    assert not (tmp_path / "v").exists()


def test_no_prompt_and_no_validation_prompts_says_pass_prompt(checkpoint, tmp_path, capsys):
    bare = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, bare)
    trial = json.loads((bare / "trial.json").read_text())
    trial["train"]["validation"]["prompts"] = []
    (bare / "trial.json").write_text(json.dumps(trial))
    assert infer(bare, tmp_path / "v") == 2
    assert "pass --prompt" in one_error_line(capsys)
    assert not (tmp_path / "v").exists()
