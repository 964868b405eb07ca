"""A sweep whose trials shard their model (train.parallel fsdp, 2 gloo workers per trial) on the
session's local Ray cluster, through to its report, `infer` on its best trial and `export`, whose
folder stock diffusers loads: every reader of a checkpoint's weights joins sharded/ itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from orchestrator.cli import main as cli_main
from orchestrator.recipe.checkpoint_weights import model_state
from orchestrator.spec import load_spec
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fsdp_sweep(ray_cluster, base_cache, tmp_path_factory):
    from orchestrator.sweep.run import run_sweep

    cwd = tmp_path_factory.mktemp("fsdp_sweep")
    overrides = [f"train.base_cache_dir={base_cache}", "train.parallel=fsdp", "sla.topk=0.25",
                 "resources.workers_per_trial=2", "name=fsdp_smoke"]  # fmt: skip
    spec = load_spec(SMOKE, overrides, cwd=cwd, gpus_available=0)
    outcome = run_sweep(spec)
    return spec, outcome


def test_fsdp_sweep_finishes_with_its_report(fsdp_sweep):
    _, outcome = fsdp_sweep
    assert outcome.complete
    assert [r.status for r in outcome.rows] == ["TERMINATED", "TERMINATED"]  # SLA and control
    report = outcome.sweep_dir / "report" / "report.md"
    assert report.is_file() and report.stat().st_size > 0


def test_infer_generates_clips_from_the_best_sharded_checkpoint(fsdp_sweep, tmp_path):
    _, outcome = fsdp_sweep
    out = tmp_path / "samples"
    code = cli_main(["infer", str(outcome.sweep_dir), "--out", str(out), "--num-samples", "2",
                     "--device", "cpu", "--no-mlflow"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "samples.json").read_text())
    assert (Path(summary["source"]["checkpoint"]) / "sharded").is_dir()  # a sharded trial's
    assert sorted(p.suffix for p in out.glob("clip*")) == [".gif", ".gif", ".png", ".png"]


def test_export_of_a_sharded_trial_loads_in_stock_diffusers(fsdp_sweep, tmp_path):
    _, outcome = fsdp_sweep
    out = tmp_path / "export"
    assert cli_main(["export", str(outcome.sweep_dir), str(out)]) == 0
    info = json.loads((out / "inference.json").read_text())
    checkpoint = Path(info["source"]["checkpoint"])
    assert (checkpoint / "sharded").is_dir() and not (checkpoint / "model.safetensors").exists()
    model = WanTransformer3DModel.from_pretrained(out)
    trained = model_state(checkpoint)  # the shards joined: the same weights, SLA's aside
    exported = model.state_dict()
    assert exported.keys() == {k for k in trained if ".sla." not in k}
    assert all(torch.equal(exported[k], trained[k]) for k in exported)
