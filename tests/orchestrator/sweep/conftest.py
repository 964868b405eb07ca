"""Sweep fixtures shared by several test modules, so that CI runs each sweep once.

`lora_repeats`: a LoRA (rank 2) search over the learning rate at topk 0.5, with the control, run
twice (`repeats: 2`): three configs x two seeds = six trials, five of them at once on the
session's 2 CPUs (0.4 CPU per worker), two training steps each, on the session's real Ray
cluster with a real MLflow sqlite store. test_fault_concurrent_logging.py checks concurrency
and the searched training settings on it, test_repeats.py the repeats, report and verdict."""

from __future__ import annotations

import contextlib
import io

import pytest

from orchestrator.spec import load_spec
from orchestrator.sweep.run import run_sweep
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"
LRS = (3.0e-4, 3.0e-3)


@pytest.fixture(scope="session")
def lora_repeats(ray_cluster, base_cache, tmp_path_factory):
    """(spec, SweepOutcome, the driver's stdout) of the six-trial LoRA sweep with repeats."""
    cwd = tmp_path_factory.mktemp("lora_repeats")
    overrides = [
        "name=lora_repeats", "sla.topk={grid: [0.5]}", f"train.lr={{grid: {list(LRS)}}}",
        "train.lora={rank: 2}", "repeats=2", "resources.cpus_per_worker=0.4",
        "max_concurrent_trials=5", "train.steps=2", "train.checkpoint_every=0",
        f"train.base_cache_dir={base_cache}",
    ]  # fmt: skip
    spec = load_spec(SMOKE, overrides, cwd=cwd, gpus_available=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the driver's progress lines
        outcome = run_sweep(spec)
    return spec, outcome, out.getvalue()
