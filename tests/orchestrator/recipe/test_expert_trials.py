"""Trials of a two-expert (Wan2.2 A14B-style) tiny pipeline without Ray: each expert trains only
on its timesteps, an expert not trained keeps its weights and dense attention, and the trained
pair's checkpoint runs `infer` and exports a pipeline stock WanPipeline loads with both experts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline
from safetensors.torch import load_file

from orchestrator.cli import main as cli_main
from orchestrator.data.cache import tensor_digest
from orchestrator.infer.pipeline_videos import FRAMES_FILE
from orchestrator.models.experts import ExpertPair
from orchestrator.recipe import RecordingCallback, TrainConfig
from orchestrator.recipe.train import TrialRecipe
from sla_kernel_glue import SLAConfig
from tests.pipelines import tiny_pipeline

pytestmark = pytest.mark.slow  # every test trains a trial

SLA = SLAConfig(topk=0.5, blkq=16, blkk=16)
BOUNDARY = 0.875 * 1000  # the tiny wan2.2-a14b pipeline's boundary_ratio, on the 0-1000 scale


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("pipelines"), "wan2.2-a14b")


def run_recorded(pipeline: Path, tmp: Path, experts: str):
    """A 4-step trial training `experts`; ({expert: timesteps of its training calls}, digests of
    each expert's weights before and after, the trial's final metrics)."""
    train = TrainConfig.from_dict({
        "model": str(pipeline), "steps": 4, "batch_size": 2, "log_every": 1, "sample_steps": 2,
        "warmup_steps": 1, "experts": experts, "validation": {"prompts": ["a digit"], "steps": 2},
        "data": {"source": "digits", "frames": 9, "size": 32, "num_train": 4, "num_val": 2,
                 "cache_dir": str(tmp / "cache")},
    })  # fmt: skip
    recipe = TrialRecipe(train, SLA, tmp / "work", callback=RecordingCallback())
    seen: dict[str, list[float]] = {"transformer": [], "transformer_2": []}
    try:
        recipe.setup()
        pair = recipe.accelerator.unwrap_model(recipe.model)
        assert isinstance(pair, ExpertPair)
        before = {name: tensor_digest(e.state_dict()) for name, e in pair.experts().items()}
        for name, expert in pair.experts().items():

            def record(_module, args, name=name):
                if torch.is_grad_enabled():  # a training step (evaluation runs under no_grad)
                    seen[name].extend(args[1].flatten().tolist())

            expert.register_forward_pre_hook(record)
        final = recipe.train()
        after = {name: tensor_digest(e.state_dict()) for name, e in pair.experts().items()}
        layers = sorted(recipe.handle.layers)
    finally:
        recipe.cleanup()
    return seen, before, after, final, layers


def test_a_low_noise_trial_trains_that_expert_on_its_timesteps_alone(a14b, tmp_path):
    seen, before, after, final, layers = run_recorded(a14b, tmp_path, "low_noise")
    assert not seen["transformer"]  # the high-noise expert never ran a training step
    assert len(seen["transformer_2"]) == 4 * 2 and max(seen["transformer_2"]) < BOUNDARY
    assert before["transformer"] == after["transformer"]  # frozen, dense: its weights unchanged
    assert before["transformer_2"] != after["transformer_2"]
    assert all(path.startswith("transformer_2.") for path in layers) and len(layers) == 2
    assert math.isfinite(final["val/loss"]) and math.isfinite(final["val/video_psnr"])


def test_a_two_expert_trial_infers_and_exports_with_both(a14b, tmp_path):
    seen, before, after, final, layers = run_recorded(a14b, tmp_path, "both")
    assert min(seen["transformer"], default=BOUNDARY) >= BOUNDARY
    assert max(seen["transformer_2"], default=0.0) < BOUNDARY
    assert len(seen["transformer"]) + len(seen["transformer_2"]) == 4 * 2
    assert all(before[name] != after[name] for name in before if seen[name])
    assert len(layers) == 4  # SLA in both experts' self-attention
    checkpoint = tmp_path / "work" / "checkpoint_000004"
    options = ["--prompt", "a digit", "--frames", "9", "--size", "32", "--steps", "2",
               "--device", "cpu", "--no-mlflow"]  # fmt: skip
    assert cli_main(["infer", str(checkpoint), "--out", str(tmp_path / "from_ckpt"), *options]) == 0
    assert cli_main(["export", str(checkpoint), str(tmp_path / "export")]) == 0
    export = tmp_path / "export"
    assert (export / "transformer_2").is_dir() and not (
        export / "transformer" / "sla_attention.pt"
    ).exists()
    stock = WanPipeline.from_pretrained(export, local_files_only=True)
    assert stock.transformer_2 is not None and stock.config.boundary_ratio == 0.875
    for name in ("transformer", "transformer_2"):  # the fine-tuned weights, no SLA tensors
        saved = getattr(stock, name).state_dict()
        assert not any("sla" in key for key in saved)
    assert cli_main(["infer", str(export), "--out", str(tmp_path / "from_export"), *options]) == 0
    frames = [
        load_file(tmp_path / out / FRAMES_FILE)["frames"] for out in ("from_ckpt", "from_export")
    ]
    # the same weights through the same code (safetensors round trip is exact): the same frames
    assert torch.equal(frames[0], frames[1])
