"""What a sweep leaves in MLflow for its review: the experiment marked as model training, a
saved runs-table view (the trials, their settings and key metrics as columns), the links to it
and to the compare view, and the parent run's summary metrics (the control, the best trial, the
sparsest setting that holds quality, per-config means and spreads, a verdict when one is given).

The MLflow UI (3.17) opens an experiment in its GenAI views unless told otherwise: the
experiment kind tag says "custom_model_development" (model training) and every link carries
`workflowType=machine_learning`, which the UI's sidebar switch reads first. The runs-table view is
a shared view state (an experiment tag `mlflow.sharedViewState.<key>` holding the view as JSON,
what the UI's own "Share" button writes), named by the parent run, so a link works from the
moment the sweep starts.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.report.findings import group_rows
from orchestrator.report.labels import label_keys
from orchestrator.report.study import read_verdict
from orchestrator.report.table import best_row
from orchestrator.storage.records import FINISHED, TrialRow
from orchestrator.tracking.creds import public_uri
from orchestrator.tracking.tags import (
    EXPERIMENT_KIND_TAG,
    MODEL_TAG,
    PARENT_TAG,
    SHARED_VIEW_PREFIX,
    VERDICT_TAG,
)
from orchestrator.values import is_num

TRAINING_KIND = "custom_model_development"  # the UI's "Machine learning" (not "GenAI apps")
WORKFLOW = "workflowType=machine_learning"

# The runs table's metric columns, in this order; what the parent run summarises.
KEY_METRICS = ("val/loss", "val/loss_gap", "val/sample_psnr", "val/attn_rel_err",
               "flops/attention_ratio", "train/loss", "perf/step_s")  # fmt: skip
SUMMARY_METRICS = ("val/loss", "val/loss_gap", "val/sample_psnr", "flops/attention_ratio")
FLOPS_METRIC = "flops/attention_ratio"


def view_key(parent_run_id: str) -> str:
    """The shared view state's key of a sweep (its parent run): the URL's viewStateShareKey."""
    return f"sla-sweep-{parent_run_id}"


def view_state(parent_run_id: str, params: Iterable[str], metric: str, mode: str) -> dict:
    """The runs table of one sweep's trials: its child runs (the parent's filter), ranked by the
    sweep's metric, with the given params and the key metrics as the first columns."""
    metrics = [metric, *(m for m in KEY_METRICS if m != metric)]
    columns = [*(f"params.`{p}`" for p in params), *(f"metrics.`{m}`" for m in metrics),
               "attributes.`Dataset`", "attributes.`Models`"]  # fmt: skip
    return {
        "searchFilter": f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode == "min",
        "selectedColumns": columns,
        "columnOrder": columns,
    }


def save_view(client, experiment_id: str, parent_run_id: str, state: Mapping[str, Any]) -> str:
    """Store the view on the experiment (tag), and mark the experiment as model training.
    `client`: anything with MlflowClient's set_experiment_tag (a SweepRecorder queues it)."""
    key = view_key(parent_run_id)
    client.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + key, json.dumps(state))
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return key


def view_columns(params: Iterable[str]) -> list[str]:
    """A sweep's param columns from its parent's params: every SLA field (sla.topk.grid, the
    searched kind flattened in, -> sla.topk) and every searched training setting (lr.grid ->
    train.lr); fixed training settings are the same in every trial and stay out."""
    kinds = re.compile(r"\.(grid|choice|uniform|loguniform)$")
    out: list[str] = []
    for key in params:
        bare = kinds.sub("", key)
        if key.startswith("sla."):
            out.append(bare)
        elif bare != key:
            out.append(f"train.{bare}")
    return list(dict.fromkeys(out))


def trial_columns(rows: Sequence[TrialRow]) -> list[str]:
    """The finished sweep's param columns: the settings that vary first, then the other SLA
    fields the trials ran with."""
    varying = [k if k.startswith("train.") else f"sla.{k}" for k in label_keys(rows, repeats=True)]
    fixed = [f"sla.{k}" for r in rows for k in (r.sla or {})]
    return list(dict.fromkeys([*varying, *fixed]))


def links(
    base_url: str, experiment_id: str, parent_run_id: str, child_run_ids: Sequence[str]
) -> dict[str, str]:
    """UI links of a sweep: its runs table, the compare view of all its trials, the parent run."""
    base = f"{base_url.rstrip('/')}/#/experiments/{experiment_id}"
    compare = urllib.parse.urlencode(
        {"runs": json.dumps(list(child_run_ids)), "experiments": json.dumps([experiment_id])}
    )
    return {
        "runs": f"{base}/runs?viewStateShareKey={view_key(parent_run_id)}&{WORKFLOW}",
        "compare": f"{base_url.rstrip('/')}/#/compare-runs?{compare}&{WORKFLOW}",
        "sweep run": f"{base}/runs/{parent_run_id}?{WORKFLOW}",
    }


def model_link(base_url: str, name: str, version: str) -> str:
    quoted = urllib.parse.quote(name, safe="")
    return f"{base_url.rstrip('/')}/#/models/{quoted}/versions/{version}?{WORKFLOW}"


# ---- the parent run's metrics ----------------------------------------------------------------
def parent_metrics(
    rows: Sequence[TrialRow], metric: str, mode: str, verdict: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """control/<m> and best/<m> (the best SLA trial by the sweep's metric) for the key metrics;
    from the verdict (findings.judge): best/holding_flops_ratio, the mean attention-FLOPs ratio of
    the sparsest config that holds quality, and sweep/holding_configs, how many hold;
    config/<label>/<m>_mean (and _std over repeats), config/<label>/n; sweep/trials and
    sweep/finished."""
    done = [r for r in rows if r.status == FINISHED]
    out = {"sweep/trials": float(len(rows)), "sweep/finished": float(len(done))}
    control = next((r for r in done if r.sla is None), None)
    best = best_row(rows, metric, mode)
    for prefix, row in (("control", control), ("best", best)):
        if row is not None:
            out.update({f"{prefix}/{m}": float(row.metrics[m]) for m in KEY_METRICS
                        if is_num(row.metrics.get(m))})  # fmt: skip
    compared = (verdict or {}).get("comparisons") or []
    held = [c for c in compared if c.get("holds")]
    if compared:
        out["sweep/holding_configs"] = float(len(held))
    chosen = next((c for c in held if c.get("label") == (verdict or {}).get("best")), None)
    if chosen is not None and is_num(chosen.get("flops_ratio")):
        out["best/holding_flops_ratio"] = float(chosen["flops_ratio"])
    out.update(config_summaries(done))
    return out


def metric_key_part(label: str) -> str:
    """A config's name inside a metric key (MLflow allows letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w.\-]+", "_", label.replace("=", "_")).strip("_") or "config"


def config_summaries(rows: Sequence[TrialRow]) -> dict[str, float]:
    """Per config (its repeats: findings.group_rows): the mean of each summary metric, its sample
    standard deviation when there are two trials or more, and the count."""
    out: dict[str, float] = {}
    for group in group_rows(rows):
        label = metric_key_part(group.label)
        out[f"config/{label}/n"] = float(len(group.finished))
        for m in SUMMARY_METRICS:
            spread = group.spread(m)
            if spread is None:
                continue
            out[f"config/{label}/{m}_mean"] = spread.mean
            if spread.std is not None:
                out[f"config/{label}/{m}_std"] = spread.std
    return out


def verdict_records(verdict: Mapping[str, Any] | None) -> tuple[dict[str, float], dict[str, str]]:
    """A verdict dict -> (metrics verdict/<key> for its numbers, tags sla_sweep.verdict.<key> for
    the rest); its "text" (or "summary") is also the tag sla_sweep.verdict itself."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for key, value in (verdict or {}).items():
        if isinstance(value, (list, dict)):
            continue  # the per-config comparisons: in report/verdict.json and the description
        if is_num(value):
            metrics[f"verdict/{key}"] = float(value)
        elif value is not None:
            tags[f"{VERDICT_TAG}.{key}"] = str(value)[:5000]
    text = (verdict or {}).get("text") or (verdict or {}).get("summary")
    if text:
        tags[VERDICT_TAG] = str(text)[:5000]
    return metrics, tags


# ---- at the end of a sweep -------------------------------------------------------------------
def log_review(
    recorder,
    spec,
    sweep_dir,
    rows: Sequence[TrialRow],
    *,
    complete: bool,
    verdict: Mapping[str, Any] | None = None,
) -> list[str]:
    """The parent run's metrics (and the verdict: `verdict`, else the sweep directory's
    verdict.json when there is one), the runs-table view with the trials' settings, and, for a
    complete sweep, the best SLA trial registered; returns the lines to print (how to review)."""
    sweep_dir = Path(sweep_dir)
    parent = recorder.parent_run_id
    if verdict is None:
        verdict = read_verdict(sweep_dir)
    numbers, tags = verdict_records(verdict)
    summary = parent_metrics(rows, spec.metric, spec.mode, verdict)
    recorder.log_metrics(parent, {**summary, **numbers}, 0)
    if tags:
        recorder.set_tags(parent, tags)
    state = view_state(parent, trial_columns(rows), spec.metric, spec.mode)
    save_view(recorder, recorder.experiment_id, parent, state)
    lines = [f"review: sla-sweep ui {sweep_dir}"]
    best = best_row(rows, spec.metric, spec.mode)
    if complete and not recorder.settled():  # registering needs the store itself
        lines.append(f"not registered yet: the tracking server is unreachable; "
                     f"sla-sweep resume {sweep_dir} registers it")  # fmt: skip
        complete = False
    if best is not None:
        best = dataclasses.replace(best, run_id=recorder.resolve(best.run_id))
    version = _register(recorder, spec.name, best, sweep_dir) if complete else None
    if version is not None:
        uri = f"models:/{version.name}/{version.version}"
        recorder.set_tags(parent, {MODEL_TAG: uri})
        lines.append(f"registered: {uri} (sla-sweep infer {uri})")
    if recorder.tracking_uri.startswith(("http://", "https://")):
        children = [recorder.resolve(r.run_id) for r in rows if r.run_id]
        found = links(public_uri(recorder.tracking_uri), recorder.experiment_id, parent, children)
        lines += [f"  {what}: {url}" for what, url in found.items()]
    return lines


def _register(recorder, name: str, best: TrialRow | None, sweep_dir):
    """The best SLA trial's version (model_registry.register_best); None without one."""
    # heavy: recipe.checkpoint imports torch and accelerate, model_registry MLflow's registry
    from orchestrator.recipe.checkpoint import latest_checkpoint
    from orchestrator.tracking.model_registry import register_best

    if best is None or not best.run_id or not best.checkpoint:
        return None
    checkpoint = latest_checkpoint(Path(best.checkpoint))
    if checkpoint is None:
        return None
    return register_best(recorder.client, recorder.experiment_id, name, best, checkpoint,
                         Path(sweep_dir))  # fmt: skip
