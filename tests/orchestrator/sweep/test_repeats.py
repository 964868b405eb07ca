"""Repeats on a real sweep (conftest.py's `lora_repeats`: a LoRA lr search at topk 0.5 and the
control, two seeds each, on the session's local Ray cluster with a real MLflow store). Every
config has two child runs lined up by tags, the report (report.md with its figures) and the
verdict land in the sweep directory and on the parent run; `best` says the verdict. The smoke sweep (one run per config) has a report too, whose
verdict says it has no error bars."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from orchestrator.tracking.tags import CONFIG_TAG, SEED_TAG, VERDICT_TAG

SECTIONS = ("## Verdict", "## Every config", "## Quality against attention FLOPs",
            "## Loss curves", "## Samples", "## Settings")  # fmt: skip
FIGURES = ("pareto.png", "loss_curves.png", "samples.png")

pytestmark = pytest.mark.slow


def check_report(sweep_dir: Path) -> str:
    """report.md has every section and each figure it shows opens as an image."""
    report = sweep_dir / "report" / "report.md"
    text = report.read_text()
    for section in SECTIONS:
        assert section in text, section
    for name in FIGURES:
        assert f"]({name})" in text
        with Image.open(report.parent / name) as image:
            image.verify()
    return text


def test_every_config_runs_once_per_seed_and_mlflow_lines_them_up(lora_repeats):
    spec, outcome, _ = lora_repeats
    assert outcome.complete and len(outcome.rows) == 6
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    seen = {}
    for row in outcome.rows:
        assert row.status == "TERMINATED", row.error
        trial = json.loads((Path(row.checkpoint) / "trial.json").read_text())
        assert trial["train"]["seed"] == row.train["seed"] and trial["train"]["base_seed"] == 0
        tags = client.get_run(row.run_id).data.tags
        assert tags[SEED_TAG] == str(row.train["seed"])
        seen.setdefault(tags[CONFIG_TAG], []).append((row.train["seed"], trial["base_model"]))
    assert sorted(seen) == [
        "blkq=32 blkk=32 backend=auto topk=0.5 train.lr=0.0003",
        "blkq=32 blkk=32 backend=auto topk=0.5 train.lr=0.003",
        "control train.lr=0.0003",
    ]
    for runs in seen.values():
        assert sorted(s for s, _ in runs) == [0, 1], "two repeats per config"
    bases = {json.dumps(b, sort_keys=True) for runs in seen.values() for _, b in runs}
    assert len(bases) == 1, "every repeat fine-tunes the same base"
    losses = {r.train["seed"]: r.metrics["train/loss"] for r in outcome.rows
              if r.sla is not None and r.train["lr"] == 3.0e-4}  # fmt: skip
    assert losses[0] != losses[1], "the seeds differ: data order and noise"


def test_the_report_and_verdict_reach_the_sweep_dir_and_the_parent_run(lora_repeats):
    spec, outcome, out = lora_repeats
    text = check_report(outcome.sweep_dir)
    verdict = json.loads((outcome.sweep_dir / "report" / "verdict.json").read_text())
    assert verdict["has_error_bars"] and "Welch" in verdict["text"]
    assert verdict["text"] in text and f"[sla-sweep] verdict: {verdict['text']}" in out
    assert "± " in text  # the table shows spreads
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags[VERDICT_TAG] == verdict["text"]
    assert verdict["text"] in parent.data.tags["mlflow.note.content"]
    control = [r.metrics["val/loss"] for r in outcome.rows if r.sla is None]
    # configs are named by what varies between them (train.lr here; topk is 0.5 throughout)
    control_key = "config/control_train.lr_0.0003"
    assert parent.data.metrics[f"{control_key}/val/loss_mean"] == pytest.approx(sum(control) / 2)
    assert parent.data.metrics[f"{control_key}/n"] == 2
    assert parent.data.metrics["config/train.lr_0.003/val/loss_std"] > 0
    logged = {f.path for f in client.list_artifacts(outcome.parent_run_id, "report")}
    assert {f"report/{n}" for n in (*FIGURES, "report.md", "summary.csv")} <= logged


def test_best_prints_the_verdict(lora_repeats, capsys):
    from orchestrator.sweep.commands import best

    _, outcome, _ = lora_repeats
    assert best(Namespace(target=outcome.sweep_dir)) == 0
    shown = capsys.readouterr().out
    verdict = json.loads((outcome.sweep_dir / "report" / "verdict.json").read_text())
    assert f"verdict: {verdict['text']}" in shown and "± " in shown


def test_one_run_per_config_has_a_report_without_error_bars(smoke_sweep):
    _, outcome = smoke_sweep
    text = check_report(outcome.sweep_dir)
    assert "the verdict has no error bars" in text
