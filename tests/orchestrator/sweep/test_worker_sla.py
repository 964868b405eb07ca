"""The SLA settings from the spec to the recipe: a trial's config dict (what crosses into the Ray
worker) is read back with SLAConfig.from_dict once, and the recipe gets that object. No Ray
cluster: the worker function runs here with Ray Train's context faked and the recipe recorded."""

from __future__ import annotations

from types import SimpleNamespace

import ray.train

import orchestrator.recipe
from orchestrator.spec import parse_spec
from orchestrator.storage.records import trial_sla, trial_train
from orchestrator.sweep import search_space, worker
from sla_kernel_glue import SLAConfig

RAMP = {"start": 0.9, "end": 0.1, "warmup_steps": 2, "shape": "cosine"}


def run_worker(config, monkeypatch):
    """train_loop_per_worker(config) on rank 0 of a fresh trial; the run_trial calls it made."""
    calls = []
    monkeypatch.setattr(ray.train, "get_context", lambda: SimpleNamespace(get_world_rank=lambda: 0))
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(worker, "RayReportCallback", lambda *args, **kwargs: None)
    monkeypatch.setattr(
        orchestrator.recipe, "run_trial", lambda *args, **kw: calls.append(args), raising=False
    )
    worker.train_loop_per_worker(config)
    return calls


def test_the_worker_hands_the_recipe_the_trials_sla_config(tmp_path, monkeypatch):
    doc = {"name": "t", "model": "tiny", "train": {"steps": 3},
           "sla": {"topk_schedule": RAMP, "feature_map": {"grid": ["elu", "relu"]}, "kl": 0.05}}  # fmt: skip
    spec = parse_spec(doc, cwd=tmp_path, gpus_available=0)
    trial = search_space.expand_trials(spec)[1]
    sla = trial_sla(spec.fixed_sla, trial)
    config = {"train": trial_train(spec.train, trial), "sla": sla}
    calls = run_worker(config, monkeypatch)

    ((train, handed, _workdir),) = calls
    assert isinstance(handed, SLAConfig) and handed == SLAConfig.from_dict(sla)
    assert (handed.feature_map, handed.kl, handed.topk) == ("relu", 0.05, 0.1)
    assert handed.topk_schedule.shape == "cosine" and handed.to_dict()["topk_schedule"] == RAMP
    assert train.steps == 3


def test_the_control_trial_hands_the_recipe_none(tmp_path, monkeypatch):
    spec = parse_spec(
        {"name": "t", "model": "tiny", "sla": {"topk": 0.2}}, cwd=tmp_path, gpus_available=0
    )
    control = search_space.expand_trials(spec)[-1]
    config = {"train": trial_train(spec.train, control), "sla": trial_sla(spec.fixed_sla, control)}
    calls = run_worker(config, monkeypatch)
    assert calls[0][1] is None
