"""A sharded trial (train.parallel fsdp, 2 gloo workers) on the session's Ray cluster loses one
worker to SIGKILL mid-trial: Ray Train starts a new worker group (failure.max_failures 1), which
resumes from the last reported sharded checkpoint and finishes with the weights of an
uninterrupted run.

The sweep's own worker loop runs under a TorchTrainer configured as a sweep trial's is; a wrapper
around the recipe's save_checkpoint kills rank 1 as it reaches the step-4 checkpoint, once (a
marker file), after the step-2 checkpoint was reported.

Tolerance: the resumed run repeats steps 3 and 4 on the same clips from the same state (model,
optimizer, RNG); what may differ is the order of float32 reductions across the new process
group, about one ulp per step (tests/orchestrator/recipe/test_parallel.py sees 1.2e-7), so 1e-5
as there; the steps themselves move weights far more (checked).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray.cloudpickle

from orchestrator.recipe.checkpoint_weights import model_state
from orchestrator.spec import load_spec
from orchestrator.sweep.run import prepare_base_model
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"
SLA = {"topk": 0.25, "blkq": 32, "blkk": 32}
WEIGHT_ATOL = 1e-5

pytestmark = pytest.mark.slow

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the loop below, by value


def killing_loop(config: dict) -> None:
    """train_loop_per_worker; with config["kill"], rank 1 SIGKILLs itself once at step 4."""
    import json
    import os
    import signal
    from contextlib import nullcontext

    import ray.train

    import orchestrator.recipe.train as recipe_train
    from orchestrator.sweep.worker import train_loop_per_worker

    real_save = recipe_train.save_checkpoint
    rank = ray.train.get_context().get_world_rank()
    marker = Path(config["kill"]) if config.get("kill") else None
    given = ray.train.get_checkpoint()  # the step this worker group starts from
    if rank == 0 and marker is not None:
        with given.as_directory() if given else nullcontext(None) as directory:
            step = (
                json.loads((Path(directory) / "trial.json").read_text())["step"] if directory else 0
            )
        with open(marker.with_suffix(".starts"), "a") as starts:
            starts.write(f"{step}\n")

    def save_checkpoint(accelerator, handle, directory, **kwargs):
        if marker is not None and rank == 1 and kwargs["step"] == 4 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(accelerator, handle, directory, **kwargs)

    recipe_train.save_checkpoint = save_checkpoint
    train_loop_per_worker({"train": config["train"], "sla": config["sla"]})


def fit(tmp: Path, train: dict, *, name: str, kill: Path | None, max_failures: int):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        killing_loop,
        train_loop_config={"train": train, "sla": SLA, "kill": str(kill) if kill else None},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name=name,
            storage_path=str(tmp / "train"),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=max_failures),
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        ),
    )
    return trainer.fit()


@pytest.fixture(scope="module")
def runs(ray_cluster, base_cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp_kill")
    overrides = [f"train.base_cache_dir={base_cache}", "train.parallel=fsdp"]
    spec = load_spec(SMOKE, overrides, cwd=tmp, gpus_available=0)
    prepare_base_model(spec)
    train = dict(spec.train)
    straight = fit(tmp, train, name="straight", kill=None, max_failures=0)
    marker = tmp / "killed"
    killed = fit(tmp, train, name="killed", kill=marker, max_failures=1)
    return spec, straight, killed, marker


def final_weights(result):
    with result.checkpoint.as_directory() as directory:
        assert (Path(directory) / "sharded").is_dir()
        return model_state(Path(directory))


def test_killed_worker_resumes_from_the_sharded_checkpoint(runs):
    spec, straight, killed, marker = runs
    assert marker.is_file(), "rank 1 was never killed"
    starts = marker.with_suffix(".starts").read_text().split()
    assert starts == ["0", "2"]  # the new worker group began at the step-2 checkpoint
    assert straight.error is None and killed.error is None
    assert killed.metrics["step"] == straight.metrics["step"] == spec.train["steps"]


def test_killed_run_ends_at_the_uninterrupted_weights(runs):
    _, straight, killed, _ = runs
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys() and any(".sla.proj_l." in k for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |killed - straight| = {diff:.3g}")  # shown with pytest -s
    assert diff <= WEIGHT_ATOL, diff
    with straight.checkpoint.as_directory() as directory:  # the steps moved weights far more
        earlier = sorted(Path(directory).parent.glob("checkpoint_*"))[0]
        moved = model_state(earlier)
    steps = max((a[k] - moved[k]).abs().max().item() for k in a)
    print(f"max |step 4 - {earlier.name}| = {steps:.3g}")
    assert steps > 20 * WEIGHT_ATOL
