"""What the smoke sweep leaves in MLflow for its review (the session's one sweep, real Ray and a
real sqlite store): the experiment marked as model training with a runs-table view, parent
metrics equal to the trials' own, a training dataset with a content digest and system metrics
on every trial, the best trial registered, and `infer models:/...` giving the checkpoint's
samples. The crafted-row tests at the end need no sweep."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from orchestrator.storage.records import TrialRow
from orchestrator.tracking.mlflow_review import (
    TRAINING_KIND,
    config_summaries,
    parent_metrics,
    verdict_records,
    view_columns,
    view_key,
)
from orchestrator.tracking.tags import EXPERIMENT_KIND_TAG, MODEL_TAG, SHARED_VIEW_PREFIX


@pytest.fixture(scope="module")
def store(smoke_sweep):
    spec, outcome = smoke_sweep
    client = MlflowClient(tracking_uri=outcome.tracking_uri, registry_uri=outcome.tracking_uri)
    children = {r.trial_id: client.get_run(r.run_id) for r in outcome.rows}
    return spec, outcome, client, client.get_run(outcome.parent_run_id), children


@pytest.mark.slow
def test_experiment_is_model_training_with_a_runs_table_view(store):
    _, outcome, client, parent, _ = store
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    view = json.loads(experiment.tags[SHARED_VIEW_PREFIX + view_key(outcome.parent_run_id)])
    assert outcome.parent_run_id in view["searchFilter"]
    assert view["selectedColumns"][0] == "params.`sla.topk`"  # the swept setting first
    assert "metrics.`val/loss`" in view["selectedColumns"]


@pytest.mark.slow
def test_parent_metrics_equal_the_trials(store):
    spec, outcome, _, parent, children = store
    metrics = parent.data.metrics
    control = next(r for r in outcome.rows if r.sla is None)
    best = outcome.best
    for key in ("val/loss", "val/loss_gap", "flops/attention_ratio"):
        assert metrics[f"control/{key}"] == children[control.trial_id].data.metrics[key], key
        assert metrics[f"best/{key}"] == children[best.trial_id].data.metrics[key], key
    assert metrics["sweep/trials"] == metrics["sweep/finished"] == len(outcome.rows) == 3
    for row in outcome.rows:  # one config per trial here: its mean is the trial's value
        label = "control" if row.sla is None else f"topk_{row.sla['topk']:g}"
        assert (
            metrics[f"config/{label}/val/loss_mean"]
            == children[row.trial_id].data.metrics["val/loss"]
        )
        assert metrics[f"config/{label}/n"] == 1
    verdict = json.loads((outcome.sweep_dir / "report" / "verdict.json").read_text())
    held = [c for c in verdict["comparisons"] if c["holds"]]
    assert metrics["sweep/holding_configs"] == len(held)
    if verdict["best"] is not None:  # the sparsest config that holds, as the verdict says
        chosen = next(c for c in held if c["label"] == verdict["best"])
        assert metrics["best/holding_flops_ratio"] == chosen["flops_ratio"]
    assert parent.data.tags["sla_sweep.verdict"] == verdict["text"]
    assert outcome.best.trial_id in parent.data.tags["mlflow.note.content"]
    assert "get-artifact?path=pareto.png" in parent.data.tags["mlflow.note.content"]
    print("parent metrics:", {k: round(v, 4) for k, v in sorted(metrics.items())})


@pytest.mark.slow
def test_every_trial_has_its_training_data_as_a_dataset_with_a_digest(store):
    _, outcome, _, _, children = store
    from orchestrator.tracking.datasets import training_input

    expected = training_input(outcome.sweep_dir).dataset
    for trial_id, run in children.items():
        inputs = run.inputs.dataset_inputs
        assert len(inputs) == 1, trial_id
        dataset = inputs[0].dataset
        assert dataset.digest == expected.digest and len(dataset.digest) == 32, trial_id
        assert dataset.name.startswith("digits-32x")
        assert json.loads(dataset.profile)["clips"] == 32
        assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    print("dataset:", expected.name, expected.digest)


@pytest.mark.slow
def test_every_trial_logs_system_metrics(store):
    _, _, client, _, children = store
    for trial_id, run in children.items():
        system = {k: v for k, v in run.data.metrics.items() if k.startswith("system/")}
        for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                    "system/system_memory_usage_percentage", "system/process_memory_rss_megabytes"):  # fmt: skip
            assert key in system, (trial_id, sorted(system))
        assert (
            system["system/process_memory_rss_megabytes"] > 50
        )  # a trial's worker: torch at least
        steps = [
            m.step
            for m in client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        ]
        assert steps == sorted(set(steps)) and len(steps) >= 4, (
            steps
        )  # one per report (log_every 1)


@pytest.mark.slow
def test_best_trial_is_a_registered_version_of_small_files(store):
    spec, outcome, client, parent, _ = store
    uri = parent.data.tags[MODEL_TAG]
    name, number = uri[len("models:/") :].split("/")
    assert name == spec.name
    version = client.get_model_version(name, number)
    best = outcome.best
    assert version.run_id == best.run_id
    assert version.tags["sla_sweep.trial_id"] == best.trial_id
    assert float(version.tags["sla.topk"]) == best.sla["topk"]
    assert float(version.tags["val/loss"]) == pytest.approx(best.metrics["val/loss"], rel=1e-5)
    model_id = version.tags["sla_sweep.logged_model"]
    assert version.source == client.get_logged_model(model_id).artifact_location
    logged = sorted(a.path for a in client.list_logged_model_artifacts(model_id))
    assert logged == [
        "sla_attention.pt",
        "trial.json",
    ]  # model.safetensors is referenced, not copied
    assert version.tags["sla_sweep.checkpoint"].startswith(str(outcome.sweep_dir))


@pytest.mark.slow
def test_infer_on_the_registered_model_gives_the_checkpoints_samples(store, tmp_path):
    from orchestrator.infer.command import run_infer
    from orchestrator.infer.target import resolve_target

    _, outcome, _, parent, _ = store
    uri = parent.data.tags[MODEL_TAG]
    target = resolve_target(uri, tracking_uri=outcome.tracking_uri)
    assert target.trial_id == outcome.best.trial_id and target.run_id == outcome.best.run_id
    common = {"num_samples": 2, "seed": 5, "device": "cpu", "log_to_mlflow": False}
    registered = run_infer(
        uri, out=tmp_path / "registered", tracking_uri=outcome.tracking_uri, **common
    )
    direct = run_infer(str(target.directory), out=tmp_path / "checkpoint", **common)
    assert registered.sla_calls > 0
    a = load_file(str(registered.out_dir / "samples.safetensors"))
    b = load_file(str(direct.out_dir / "samples.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_model_uris_are_one_line(tmp_path):
    from orchestrator.infer.model import InferenceError
    from orchestrator.infer.target import resolve_target

    store = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=store).search_experiments()  # creates the empty store
    for uri, why in (("models:/nothing/1", "not in the model registry"),
                     ("models:/nothing", "is not models:/NAME/VERSION")):  # fmt: skip
        with pytest.raises(InferenceError, match=why):
            resolve_target(uri, tracking_uri=store)


# ---- crafted rows: no sweep ------------------------------------------------------------------
def _row(trial, topk, loss, ratio, seed=0):
    sla = None if topk is None else {"topk": topk}
    metrics = {"val/loss": loss, "flops/attention_ratio": ratio}
    return TrialRow(trial, sla, status="TERMINATED", metrics=metrics, train={"seed": seed})


def test_parent_metrics_of_repeats_hold_and_spread():
    rows = [_row("c0", None, 1.00, 1.0), _row("c1", None, 1.02, 1.0, seed=1),
            _row("a0", 0.1, 1.01, 0.2), _row("a1", 0.1, 1.03, 0.2, seed=1),
            _row("b0", 0.5, 0.99, 0.6)]  # fmt: skip
    from orchestrator.report.findings import group_rows, judge
    from orchestrator.spec.schema import VerdictSpec

    verdict = judge(group_rows(rows), VerdictSpec()).to_json()  # topk 0.1 and 0.5 within noise
    out = parent_metrics(rows, "val/loss", "min", verdict)
    assert out["best/val/loss"] == 0.99 and out["best/flops/attention_ratio"] == 0.6
    assert verdict["best"] == "topk=0.1" and out["best/holding_flops_ratio"] == 0.2
    assert out["sweep/holding_configs"] == 2
    summaries = config_summaries([r for r in rows if r.trial_id in ("a0", "a1")])
    (label,) = {k.split("/")[1] for k in summaries}
    assert summaries[f"config/{label}/val/loss_mean"] == pytest.approx(1.02)
    assert summaries[f"config/{label}/val/loss_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert summaries[f"config/{label}/n"] == 2


def test_verdict_dict_becomes_tags_and_metrics():
    metrics, tags = verdict_records(
        {"text": "topk 0.1 holds", "flops_saving": 0.8, "setting": "topk=0.1"}
    )
    assert metrics == {"verdict/flops_saving": 0.8}
    assert (
        tags["sla_sweep.verdict"] == "topk 0.1 holds"
        and tags["sla_sweep.verdict.setting"] == "topk=0.1"
    )
    assert verdict_records(None) == ({}, {})


def test_view_columns_from_the_parent_params():
    params = [
        "sla.topk.grid",
        "sla.blkq",
        "lr.grid",
        "lora.rank.choice",
        "search.algorithm",
        "metric",
    ]
    assert view_columns(params) == ["sla.topk", "sla.blkq", "train.lr", "train.lora.rank"]
