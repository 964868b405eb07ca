"""The smoke sweep end to end on the session's real local Ray cluster (2 CPUs), with a real
MLflow sqlite store, read back with MlflowClient; checkpoints load back into a model."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.recipe import TrainConfig
from sla_kernel_glue import SLAConfig, apply_sla, load_sla_state, read_sla_state
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"
TRIAL_METRICS = ("train/loss", "val/loss", "val/loss_gap", "val/attn_rel_err", "val/sample_psnr",
                 "flops/attention", "flops/attention_ratio", "flops/step", "perf/step_s",
                 "perf/tokens_per_s", "sla/fallback_calls")  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(smoke_sweep):
    """The session's one smoke sweep (tests/orchestrator/conftest.py), shared with infer/export/ui."""
    return smoke_sweep


def test_every_trial_finishes_with_all_metrics(smoke):
    spec, outcome = smoke
    assert outcome.complete
    assert len(outcome.rows) == 3
    assert sorted(str(r.sla and r.sla["topk"]) for r in outcome.rows) == ["0.25", "0.5", "None"]
    for row in outcome.rows:
        assert row.status == "TERMINATED", row.error
        assert row.step == spec.train["steps"]
        assert set(TRIAL_METRICS) <= set(row.metrics), row.trial_id
    control = next(r for r in outcome.rows if r.sla is None)
    sla_rows = [r for r in outcome.rows if r.sla is not None]
    assert control.metrics["flops/attention_ratio"] == pytest.approx(1.0)
    assert all(r.metrics["flops/attention_ratio"] < 1.0 for r in sla_rows)
    # topk 0.25 keeps fewer key blocks than 0.5, so it costs fewer attention FLOPs
    by_topk = {r.sla["topk"]: r.metrics["flops/attention_ratio"] for r in sla_rows}
    assert by_topk[0.25] < by_topk[0.5]
    assert outcome.best is not None and outcome.best.sla is not None
    best_loss = min(r.metrics["val/loss"] for r in sla_rows)
    assert outcome.best.metrics["val/loss"] == best_loss


def test_a_local_sweep_runs_no_preemption_watcher(smoke, ray_cluster):
    # The smoke sweep ran on this process's own local instance (no --address): its trials'
    # Train controllers and workers are there, Ray Train's preemption watcher is not (it is
    # on for the sweeps that joined with --address, tests/orchestrator/sweep/test_fault_*.py).
    import ray
    from ray.util.state import list_actors

    # The address is named: under pytest-xdist another worker's Ray instance may be up too, and
    # the state API's own look-up refuses to choose between two.
    job = ray.get_runtime_context().get_job_id()
    actors = list_actors(address=ray_cluster, filters=[("job_id", "=", job)], limit=10_000)
    classes = [a.class_name for a in actors]
    assert classes.count("TrainController") >= 3, classes  # the smoke sweep's three trials
    assert "PreemptionWatcher" not in classes, classes


def test_trial_times_split_ray_start_up_from_the_recipe(smoke):
    # The overhead accounting of docs/benchmarks.md: each trial's times are in order, and
    # timings.json holds their means, the two parts of Ray's start-up adding up to the whole.
    _, outcome = smoke
    order = (
        "start",
        "trainable_start",
        "worker_created",
        "loop_start",
        "first_report",
        "last_report",
        "end",
    )
    for row in outcome.rows:
        times = [row.times[k] for k in order]
        assert times == sorted(times), (row.trial_id, row.times)
    t = outcome.timings
    assert t["trial_tune_actor_start_s"] > 0 and t["trial_train_start_s"] > 0
    assert t["trial_tune_actor_start_s"] + t["trial_train_start_s"] == pytest.approx(
        t["trial_ray_start_s"]
    )
    assert t["trial_worker_spawn_s"] + t["trial_worker_init_s"] == pytest.approx(
        t["trial_train_start_s"]
    )


def test_the_base_reference_is_computed_once_per_sweep(smoke):
    # Three trials, one file: the first trial computed the base's val loss and samples, the
    # others loaded them (tests/orchestrator/test_recipe_reference.py checks the load itself).
    _, outcome = smoke
    assert len(list((outcome.sweep_dir / "base_reference").glob("*.pt"))) == 1


def test_results_csv_and_plot(smoke):
    _, outcome = smoke
    with (outcome.sweep_dir / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["trial_id"] for r in rows} == {r.trial_id for r in outcome.rows}
    assert all(float(r["val/loss"]) > 0 for r in rows)
    png = (outcome.sweep_dir / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_mlflow_parent_and_children(smoke):
    spec, outcome = smoke
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    assert outcome.tracking_uri.startswith("sqlite:////")
    exp = client.get_experiment_by_name(spec.name)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.experiment_id == exp.experiment_id
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sla.topk.grid"] == "[0.25, 0.5]"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "results.csv", "pareto.png"} <= artifacts
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 3
    train_fields = [f.name for f in dataclasses.fields(TrainConfig)]
    sla_fields = [f.name for f in dataclasses.fields(SLAConfig)]
    by_trial = {r.trial_id: r for r in outcome.rows}
    for child in children:
        row = by_trial[child.data.tags["sla_sweep.trial_id"]]
        assert child.info.status == "FINISHED"
        params = child.data.params
        for f in sla_fields:
            assert f"sla.{f}" in params
        for f in train_fields:
            assert any(k == f"train.{f}" or k.startswith(f"train.{f}.") for k in params), f
        assert params["train.steps"] == str(spec.train["steps"])
        if row.sla is not None:
            assert float(params["sla.topk"]) == row.sla["topk"]
        assert set(TRIAL_METRICS) <= set(child.data.metrics)
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, spec.train["steps"] + 1))
        assert child.data.metrics["val/loss"] == pytest.approx(row.metrics["val/loss"])
    best_run = client.get_run(outcome.best.run_id)
    best_artifacts = [
        a.path for a in client.list_artifacts(best_run.info.run_id, "best_checkpoint")
    ]
    assert best_artifacts == ["best_checkpoint/sla_attention.pt"]


def test_checkpoints_hold_sla_weights_beside_accelerate_state(smoke):
    spec, outcome = smoke
    for row in outcome.rows:
        ckpts = sorted(
            p
            for p in (outcome.sweep_dir / "train" / row.trial_id).glob("checkpoint_*")
            if p.is_dir()
        )
        assert len(ckpts) == spec.checkpoint.num_to_keep
        assert Path(row.checkpoint) == ckpts[-1]
        for ck in ckpts:
            names = {p.name for p in ck.iterdir()}
            assert {
                "model.safetensors",
                "optimizer.bin",
                "random_states_0.pkl",
                "trial.json",
            } <= names
            assert ("sla_attention.pt" in names) == (row.sla is not None)
        trial = json.loads((ckpts[-1] / "trial.json").read_text())
        assert trial["step"] == spec.train["steps"]
        assert trial["sla"] == (None if row.sla is None else SLAConfig.from_dict(row.sla).to_dict())


def test_best_checkpoint_loads_back_into_a_model(smoke):
    from safetensors.torch import load_file

    from orchestrator.models.wan_presets import build_preset

    _, outcome = smoke
    ck = Path(outcome.best.checkpoint)
    model = build_preset("tiny", seed=123)
    with apply_sla(model, SLAConfig.from_dict(outcome.best.sla)) as handle:
        # the accelerate state is the whole fine-tuned model, SLA layers included
        model.load_state_dict(load_file(ck / "model.safetensors"), strict=True)
        for layer in handle.layers.values():
            torch.nn.init.zeros_(layer.proj_l.weight)
        assert load_sla_state(handle, ck) is True
        saved = read_sla_state(ck / "sla_attention.pt")
        assert set(saved["layers"]) == set(handle.layers)
        for path, layer in handle.layers.items():
            state = saved["layers"][path]["state"]
            for name, tensor in state.items():
                assert torch.equal(layer.state_dict()[name], tensor)
            # fine-tuning moved proj_l away from its zero init, and the load brought that back
            assert layer.proj_l.weight.abs().sum() > 0


def test_best_command_shows_the_best_trial_and_its_checkpoint(smoke, monkeypatch, capsys):
    from orchestrator.cli import main

    spec, outcome = smoke
    assert main(["best", str(outcome.sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert f"best trial: {outcome.best.trial_id}" in out
    assert f"checkpoint: {outcome.best.checkpoint}" in out
    # the YAML names the same sweep: its latest run under storage.results_dir
    monkeypatch.chdir(spec.storage.results_dir.parent)
    assert main(["best", str(SMOKE)]) == 0
    assert f"sweep {outcome.sweep_dir}" in capsys.readouterr().out
