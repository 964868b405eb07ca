"""A distill study from a prompt file alone (no clip folder anywhere), on the session's Ray
cluster with a real MLflow store and the tiny random-weight pipeline: the dense base generates
the prompts' latents once before the trials, every trial (one SLA config, LoRA, and the control)
trains on them against the dense teacher and validates with videos, the report has a verdict
that names the objective; a second sweep over the same prompts generates nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.spec import load_spec
from orchestrator.sweep.run import run_sweep

pytestmark = pytest.mark.slow

PROMPTS = ["a red square moving right", "a blue circle bouncing", "a green line turning",
           "a yellow dot fading"]  # fmt: skip
SPEC = {
    "name": "distill",
    "data": {"frames": 9, "size": 32, "num_val": 1, "generate_steps": 2},
    "validation": {"prompts": ["a red square"], "seeds": [0], "steps": 2, "guidance_scale": 3.0},
    "train": {"objective": "distill", "lora": {"rank": 4}, "steps": 2, "batch_size": 2,
              "log_every": 1, "sample_steps": 2, "warmup_steps": 1},
    "sla": {"topk": 0.5, "blkq": 16, "blkk": 16},
    "control": True,
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
    "checkpoint": {"num_to_keep": 1},
}  # fmt: skip


def _sweep(tmp: Path, pipeline: Path, prompts: Path, cache: Path, *, control: bool = True):
    tmp.mkdir(parents=True, exist_ok=True)
    doc = {**SPEC, "model": {"path": str(pipeline)}, "control": control,
           "data": {**SPEC["data"], "source": str(prompts), "cache_dir": str(cache)}}  # fmt: skip
    (tmp / "distill.yaml").write_text(yaml.safe_dump(doc))
    outcome = run_sweep(load_spec(tmp / "distill.yaml", cwd=tmp, gpus_available=0))
    meta = json.loads((outcome.sweep_dir / "sweep.json").read_text())
    return outcome, json.loads(Path(meta["encoded"]).read_text())


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def first(ray_cluster, tiny_pipeline_dir, prompt_file, tmp_path_factory):
    cache = tmp_path_factory.mktemp("encoded")
    outcome, manifest = _sweep(
        tmp_path_factory.mktemp("first"), tiny_pipeline_dir, prompt_file, cache
    )
    return outcome, manifest, cache


def test_trials_train_on_the_generated_latents_and_validate(first):
    outcome, manifest, _ = first
    assert outcome.complete
    assert [r.status for r in outcome.rows] == ["TERMINATED"] * 2, [r.error for r in outcome.rows]
    assert len(manifest["train"]) == 3 and len(manifest["val"]) == 1
    assert [r["caption"] for r in manifest["train"] + manifest["val"]] == PROMPTS
    assert manifest["stats"]["latents"]["computed"] == 4  # one generation per prompt
    assert manifest["generation"]["steps"] == 2 and manifest["latent_shape"] == [4, 3, 4, 4]
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    for row in outcome.rows:
        run = client.get_run(row.run_id)
        assert run.data.params["train.objective"] == "distill"
        for key in ("val/distill_loss", "val/video_psnr", "val/video_ssim", "train/loss"):
            assert key in run.data.metrics, (row.trial_id, key)
    control = next(r for r in outcome.rows if r.sla is None)
    # the control is the base with a LoRA adapter taught by itself: it stays the base
    assert client.get_run(control.run_id).data.metrics["val/distill_loss"] < 1e-8


def test_the_report_has_a_verdict_that_names_the_objective(first):
    outcome, _, _ = first
    verdict = json.loads((outcome.sweep_dir / "report" / "verdict.json").read_text())
    assert verdict["text"].endswith("[objective distill]")
    report = (outcome.sweep_dir / "report" / "report.md").read_text()
    assert "Training objective: `distill`" in report and verdict["text"] in report


def test_a_second_sweep_generates_nothing(first, tiny_pipeline_dir, prompt_file, tmp_path_factory):
    _, manifest, cache = first
    outcome, again = _sweep(
        tmp_path_factory.mktemp("second"), tiny_pipeline_dir, prompt_file, cache, control=False
    )
    assert outcome.complete
    assert again["stats"]["latents"] == {"hits": 4, "computed": 0, "damaged": []}
    assert again["stats"]["texts"]["computed"] == 0 and again["stats"]["generate_s"] == 0.0
    assert [r["latent"] for r in again["train"]] == [r["latent"] for r in manifest["train"]]
