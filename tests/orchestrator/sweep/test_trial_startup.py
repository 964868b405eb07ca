"""What a trial's start-up and the sweep's driver no longer pay for (issue 35;
benchmarks/trial_startup.py measures it, docs/benchmarks.md has the numbers).

- The trial's TorchTrainer starts no Ray Data DatasetManager actor (one process per trial): its
  default callbacks are Ray's less the DatasetsCallback, and only that one, for a run without
  datasets.
- The driver's modules import neither Ray Train's torch trainer, accelerate nor diffusers, nor
  does preparing a preset sweep's (absent) encoded data: the driver uses none of them (the
  trial's actor and workers import what they use).
"""

from __future__ import annotations

import json
import subprocess
import sys

from orchestrator.sweep.trainable import _trainer_class
from tests.paths import REPO


def _loop(config):  # a train function for the trainers built below (never run)
    return None


def test_the_sweep_trainer_drops_only_the_datasets_callback():
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    scaling = ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1})
    ours = _trainer_class()(_loop, scaling_config=scaling)._create_default_callbacks()
    rays = TorchTrainer(_loop, scaling_config=scaling)._create_default_callbacks()
    assert any(isinstance(c, DatasetsCallback) for c in rays)
    assert not any(isinstance(c, DatasetsCallback) for c in ours)
    kept = [type(c) for c in rays if not isinstance(c, DatasetsCallback)]
    assert [type(c) for c in ours] == kept
    assert isinstance(_trainer_class()(_loop, scaling_config=scaling), TorchTrainer)


def test_the_drivers_modules_import_no_trainer_accelerate_or_diffusers():
    # and preparing a preset's encoded data (there is none) imports no pipeline module either
    code = (
        "import json, sys; from pathlib import Path; import orchestrator.sweep.run, orchestrator.cli; "
        "from orchestrator.spec import load_spec; "
        "from orchestrator.storage.sweep_files import prepare_encoded_data; "
        "spec = load_spec('experiments/topk.yaml', cwd=Path.cwd(), gpus_available=0); "
        "assert prepare_encoded_data(spec) is None; "
        "print(json.dumps(sorted(m for m in ('accelerate', 'diffusers', 'ray.train.torch', "
        "'orchestrator.recipe.checkpoint', 'orchestrator.sweep.worker', "
        "'orchestrator.models.pipeline') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(REPO), "PATH": ""})  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
