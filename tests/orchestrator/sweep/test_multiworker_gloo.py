"""One trial on 2 Ray Train CPU workers (torch.distributed over gloo, DDP through accelerate), on
the session's real Ray cluster: the sweep's own worker loop (orchestrator.sweep.worker) under a
TorchTrainer configured as a sweep trial's is. A spy around the recipe's save_checkpoint (the
real one still runs) records what each rank held at every checkpoint, so the test can show:
the run completes; the persisted sla_attention.pt equals rank 0's weights; every rank holds the
same proj_l (the gradients were all-reduced: the ranks trained on different clips); every
rank's checkpoint files reach the storage by a rename (the same inodes), not by a copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray.cloudpickle
import torch

from orchestrator.data import StepSampler
from orchestrator.spec import load_spec
from orchestrator.sweep.run import prepare_base_model
from sla_kernel_glue import read_sla_state
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"
SLA = {"topk": 0.25, "blkq": 32, "blkk": 32}

pytestmark = pytest.mark.slow

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the loop below, by value


def spy_loop(config: dict) -> None:
    """train_loop_per_worker, with every rank's SLA weights saved at each checkpoint."""
    import ray.train
    import torch
    import torch.distributed as dist

    import orchestrator.recipe.train as recipe_train
    from orchestrator.sweep.worker import train_loop_per_worker

    real_save = recipe_train.save_checkpoint
    rank = ray.train.get_context().get_world_rank()

    def save_checkpoint(accelerator, handle, directory, **kwargs):
        result = real_save(accelerator, handle, directory, **kwargs)
        held = {path: {k: v.detach().cpu().clone() for k, v in layer.state_dict().items()}
                for path, layer in handle.layers.items()}  # fmt: skip
        facts = {"backend": dist.get_backend(), "world_size": dist.get_world_size(),
                 "distributed_type": str(accelerator.distributed_type),
                 "num_processes": accelerator.num_processes,
                 "files": {str(p.relative_to(directory)): p.stat().st_ino
                           for p in Path(directory).rglob("*") if p.is_file()}}  # fmt: skip
        torch.save(
            {"held": held, **facts}, Path(config["dump"]) / f"step{kwargs['step']}_rank{rank}.pt"
        )
        return result

    recipe_train.save_checkpoint = save_checkpoint
    train_loop_per_worker({"train": config["train"], "sla": config["sla"]})


@pytest.fixture(scope="module")
def two_worker_trial(ray_cluster, base_cache, tmp_path_factory):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tmp = tmp_path_factory.mktemp("gloo")
    spec = load_spec(SMOKE, [f"train.base_cache_dir={base_cache}"], cwd=tmp, gpus_available=0)
    prepare_base_model(spec)  # as the sweep does: once, on the driver, before the workers start
    dump = tmp / "held"
    dump.mkdir()
    trainer = TorchTrainer(
        spy_loop,
        train_loop_config={"train": dict(spec.train), "sla": SLA, "dump": str(dump)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name="two_workers",
            storage_path=str(tmp / "train"),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        ),
    )
    result = trainer.fit()
    return spec, result, dump


def held(dump: Path, step: int, rank: int) -> dict:
    return torch.load(dump / f"step{step}_rank{rank}.pt", weights_only=True)


def test_both_workers_complete_as_one_gloo_ddp_run(two_worker_trial):
    spec, result, dump = two_worker_trial
    assert result.error is None
    assert result.metrics["step"] == spec.train["steps"]
    for rank in (0, 1):
        facts = held(dump, spec.train["steps"], rank)
        assert facts["backend"] == "gloo" and facts["world_size"] == 2
        assert facts["distributed_type"].endswith("MULTI_CPU") and facts["num_processes"] == 2
    # the two ranks trained on different clips at every step, so equal weights need the all-reduce
    sampler = StepSampler(spec.train["data"]["num_train"], batch_size=spec.train["batch_size"],
                          grad_accum=1, world_size=2, seed=0)  # fmt: skip
    assert all(
        sampler.indices(s, 0, 0) != sampler.indices(s, 0, 1) for s in range(spec.train["steps"])
    )


def test_proj_l_identical_across_ranks(two_worker_trial):
    spec, _, dump = two_worker_trial
    every = spec.train["checkpoint_every"]
    steps = list(range(every, spec.train["steps"] + 1, every))
    for step in steps:
        rank0, rank1 = held(dump, step, 0)["held"], held(dump, step, 1)["held"]
        assert rank0.keys() == rank1.keys() and rank0
        for path in rank0:
            for key in rank0[path]:
                assert torch.equal(rank0[path][key], rank1[path][key]), (step, path, key)
    first, last = held(dump, steps[0], 0)["held"], held(dump, steps[-1], 0)["held"]
    moved = [
        p for p in first if not torch.equal(first[p]["proj_l.weight"], last[p]["proj_l.weight"])
    ]
    assert moved, "proj_l did not train, so equal weights would prove nothing"


def test_persisted_sla_attention_equals_rank0(two_worker_trial):
    spec, result, dump = two_worker_trial
    with result.checkpoint.as_directory() as directory:
        saved = read_sla_state(Path(directory) / "sla_attention.pt")
        names = {p.name for p in Path(directory).iterdir()}
    assert {
        "random_states_0.pkl",
        "random_states_1.pkl",
        "trial.json",
    } <= names  # both ranks' parts
    rank0 = held(dump, spec.train["steps"], 0)["held"]
    assert saved["layers"].keys() == rank0.keys()
    for path, entry in saved["layers"].items():
        for key, tensor in entry["state"].items():
            assert torch.equal(tensor, rank0[path][key]), (path, key)


def test_checkpoint_files_are_moved_into_storage(two_worker_trial):
    """The worker's upload renames each rank's files into the persisted checkpoint (storage on
    the scratch folder's filesystem): the same inodes, so no second copy was ever on disk."""
    spec, result, dump = two_worker_trial
    with result.checkpoint.as_directory() as directory:
        persisted = {str(p.relative_to(directory)): p.stat().st_ino
                     for p in Path(directory).rglob("*") if p.is_file()}  # fmt: skip
    for rank in (0, 1):
        written = held(dump, spec.train["steps"], rank)["files"]
        assert written, rank
        assert {name: persisted.get(name) for name in written} == written, rank
