"""One pipeline trial without Ray (tiny random-weight Wan2.1 and Wan2.2-style pipelines, the digits
written as a captioned MP4 folder): it trains on the encoded cache, never loading the VAE or the
text encoder to train, and validates with videos against the base."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
from orchestrator.recipe.pipeline_data import prepare_encoded
from sla_kernel_glue import SLAConfig
from tests.pipelines import tiny_pipeline

SLA = SLAConfig(topk=0.5, blkq=16, blkk=16)


def _config(pipeline: Path, cache: Path, *, size: int, prompts=("a handwritten digit seven",)):
    return TrainConfig.from_dict({
        "model": str(pipeline), "steps": 2, "batch_size": 2, "log_every": 1, "sample_steps": 2,
        "warmup_steps": 1,
        "data": {"source": "digits", "frames": 9, "size": size, "num_train": 4, "num_val": 2,
                 "cache_dir": str(cache)},
        "validation": {"prompts": list(prompts), "steps": 2, "seeds": [0, 1]},
    })  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("variant, size", [("wan2.1", 32), ("wan2.2", 64)])
def test_a_trial_trains_and_validates_on_the_cache(variant, size, tmp_path):
    pipeline = tiny_pipeline(tmp_path.parent / "pipelines", variant)
    recorder = RecordingCallback()
    final = run_trial(_config(pipeline, tmp_path / "cache", size=size), SLA, tmp_path / "work",
                      callback=recorder, reference_cache=tmp_path / "ref")  # fmt: skip
    for key in ("val/loss", "val/video_psnr", "val/video_ssim", "perf/decode_s"):
        assert math.isfinite(final[key]), key
    assert final["sla/self_attn_fallback_calls"] == 0  # every self-attention call ran SLA
    videos = sorted(
        p.name for p in (tmp_path / "work" / "checkpoint_000002" / "validation").iterdir()
    )
    assert len(videos) == 8  # 1 prompt x 2 seeds, MP4 + PNG, the trial's and the base's
    assert sum(name.startswith("base_") for name in videos) == 4


@pytest.mark.slow
def test_training_needs_neither_the_vae_nor_the_text_encoder(tmp_path):
    pipeline = shutil.copytree(tiny_pipeline(tmp_path.parent / "pipelines"), tmp_path / "pipe")
    config = _config(pipeline, tmp_path / "cache", size=32, prompts=())
    manifest = prepare_encoded(config)
    for part in ("vae", "text_encoder"):  # the weights become unreadable: loading them would fail
        for weights in (pipeline / part).glob("*.safetensors"):
            weights.write_bytes(b"not safetensors")
    final = run_trial(
        config, SLA, tmp_path / "work", encoded=manifest, callback=RecordingCallback()
    )
    assert math.isfinite(final["val/loss"]) and final["train/loss"] > 0
    with pytest.raises(Exception):  # noqa: B017 - the damage is real: a fresh encode cannot run
        prepare_encoded(_config(pipeline, tmp_path / "other_cache", size=32, prompts=()))
