"""A sweep of a real (tiny, random-weight) Wan pipeline on a folder of real captioned MP4 clips,
on the session's Ray cluster with a real MLflow store: the clips and captions are encoded once
before the trials, every trial trains on the cache and validates with videos against the base;
a second sweep over the same data encodes nothing; a damaged cache entry is recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from orchestrator.recipe.pipeline_data import prepare_encoded
from orchestrator.spec import load_spec, parse_spec
from orchestrator.spec.recipe import build_train_config
from orchestrator.sweep.run import run_sweep

pytestmark = pytest.mark.slow

SPEC = {
    "name": "pipe",
    "data": {"frames": 9, "size": 32, "num_val": 2},
    "validation": {"prompts": ["a red square moving"], "seeds": [0], "steps": 2,
                   "guidance_scale": 3.0, "negative_prompt": "blurry"},
    "train": {"steps": 2, "batch_size": 2, "log_every": 1, "sample_steps": 2, "warmup_steps": 1},
    "sla": {"topk": {"grid": [0.34, 0.67]}, "blkq": 16, "blkk": 16},
    "control": True,
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
    "checkpoint": {"num_to_keep": 1},
}  # fmt: skip


def _train_kwargs(spec_source: dict) -> dict:
    """The TrainConfig keywords of a sweep's spec.yaml (the validated spec, as it was run)."""
    return parse_spec(spec_source).train


def _sweep(tmp: Path, pipeline: Path, clips: Path, cache: Path, *, one_trial: bool = False):
    tmp.mkdir(parents=True, exist_ok=True)
    doc = {**SPEC, "model": {"path": str(pipeline)},
           "data": {**SPEC["data"], "source": str(clips), "cache_dir": str(cache)}}  # fmt: skip
    if one_trial:  # what the cache does does not depend on the trials: one is enough
        doc.update(sla={**SPEC["sla"], "topk": 0.34}, control=False)
    (tmp / "pipe.yaml").write_text(yaml.safe_dump(doc))
    outcome = run_sweep(load_spec(tmp / "pipe.yaml", cwd=tmp, gpus_available=0))
    meta = json.loads((outcome.sweep_dir / "sweep.json").read_text())
    return outcome, json.loads(Path(meta["encoded"]).read_text())


@pytest.fixture(scope="module")
def first(ray_cluster, tiny_pipeline_dir, caption_folder, tmp_path_factory):
    cache = tmp_path_factory.mktemp("encoded")
    outcome, manifest = _sweep(
        tmp_path_factory.mktemp("first"), tiny_pipeline_dir, caption_folder, cache
    )
    return outcome, manifest, cache


def test_every_trial_trains_on_the_encoded_clips(first):
    outcome, manifest, _ = first
    assert outcome.complete
    assert [r.status for r in outcome.rows] == ["TERMINATED"] * 3, [r.error for r in outcome.rows]
    # 6 clips: 4 to train on, the last 2 held out; 6 captions + 1 prompt + the negative encoded
    assert len(manifest["train"]) == 4 and len(manifest["val"]) == 2
    assert manifest["stats"]["latents"]["computed"] == 6
    assert manifest["stats"]["texts"]["computed"] == 8
    assert manifest["latent_shape"] == [4, 3, 4, 4]  # z 4, (9 - 1) / 4 + 1 frames, 32 / 8 pixels


def test_child_runs_carry_videos_and_their_scores(first):
    outcome, _, _ = first
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    for row in outcome.rows:
        run = client.get_run(row.run_id)
        for key in ("val/video_psnr", "val/video_ssim", "val/loss"):
            assert key in run.data.metrics, (row.trial_id, key)
        assert 0.0 < run.data.metrics["val/video_ssim"] <= 1.0
        (step_dir,) = [a.path for a in client.list_artifacts(row.run_id, "validation")]
        names = sorted(Path(a.path).name for a in client.list_artifacts(row.run_id, step_dir))
        assert names == sorted(
            f"{prefix}00_a-red-square-moving_seed0.{ext}"
            for prefix in ("", "base_")
            for ext in ("mp4", "png")
        )
    control = next(r for r in outcome.rows if r.sla is None)
    # the control is the base fine-tuned the same way with full attention: its videos differ
    # from the untouched base's only by its two training steps
    assert client.get_run(control.run_id).data.metrics["val/video_psnr"] > 20.0


def test_a_second_sweep_encodes_nothing_and_a_damaged_entry_is_recomputed(
    first, tiny_pipeline_dir, caption_folder, tmp_path_factory
):
    _, manifest, cache = first
    outcome, again = _sweep(
        tmp_path_factory.mktemp("second"), tiny_pipeline_dir, caption_folder, cache, one_trial=True
    )
    assert outcome.complete
    assert again["stats"]["latents"] == {"hits": 6, "computed": 0, "damaged": []}
    assert again["stats"]["texts"] == {"hits": 8, "computed": 0, "damaged": []}
    # The driver's encode step again (no trials needed): an entry cut in half is found,
    # reported and recomputed, the others are hits.
    entry = next((cache / "latents").rglob(f"{manifest['train'][0]['latent']}.safetensors"))
    before = {k: v.clone() for k, v in load_file(entry).items()}  # not a view of the file
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])
    spec = yaml.safe_load((outcome.sweep_dir / "spec.yaml").read_text())
    third = json.loads(prepare_encoded(build_train_config(_train_kwargs(spec))).read_text())
    assert third["stats"]["latents"] == {"hits": 5, "computed": 1, "damaged": [str(entry)]}
    after = load_file(entry)  # the same clip encoded again by the same code: the same tensors
    assert all(torch.equal(before[k], after[k]) for k in ("mean", "std"))
