"""The full-attention base: pre-trained once per config, cached, shared by concurrent trials."""

import multiprocessing

import pytest
import torch

from orchestrator.recipe import TrainConfig
from orchestrator.recipe.base_model import base_model_id, load_base_model
from tests.processes_at_once import results_of


def load(config, log):
    return load_base_model(config, device=torch.device("cpu"), mixed_precision="no", log=log.append)


def _trial_process(cache, queue):
    """One concurrent trial: load (or pre-train) the base, send back its log and a weight digest."""
    torch.set_num_threads(1)
    log: list[str] = []
    model, base_id = load(TrainConfig(base_steps=4, base_cache_dir=cache), log)
    queue.put((log, base_id, float(sum(p.detach().double().sum() for p in model.parameters()))))


@pytest.mark.slow
def test_cached_by_config_and_trained_once_by_concurrent_trials(tmp_path):
    # Separate processes, as concurrent trials are (diffusers' loading is not thread-safe).
    context = multiprocessing.get_context("spawn")
    results = results_of(context, _trial_process, [(str(tmp_path),)] * 2, timeout=300)
    trained = [
        log for log, _, _ in results if any("pre-training base model" in line for line in log)
    ]
    assert len(trained) == 1  # one trial trained it, the other waited on the lock and loaded it
    (_, id_a, digest_a), (_, id_b, digest_b) = results
    assert id_a == id_b and digest_a == digest_b
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [id_a]  # no temporary left behind

    again: list[str] = []
    model, _ = load(TrainConfig(base_steps=4, base_cache_dir=str(tmp_path)), again)
    assert again == []  # cached: no training the second time
    assert float(sum(p.detach().double().sum() for p in model.parameters())) == digest_a


def test_id_changes_with_the_config():
    a = base_model_id(TrainConfig(base_steps=4), "no")
    assert a == base_model_id(
        TrainConfig(base_steps=4, lr=1.0, steps=3), "no"
    )  # fine-tune knobs don't matter
    assert a == base_model_id(
        TrainConfig(base_steps=4, data={"frames": 4, "size": 16, "num_val": 2}), "no"
    )
    assert a != base_model_id(TrainConfig(base_steps=4, data={"frames": 8}), "no")
    assert a != base_model_id(TrainConfig(base_steps=5), "no")
    assert a != base_model_id(TrainConfig(base_steps=4, seed=1), "no")
    assert a != base_model_id(TrainConfig(base_steps=4), "bf16")
    assert base_model_id(TrainConfig(base_steps=0), "no") == "tiny-init-seed0"


def test_id_of_a_folder_base_follows_the_files(tmp_path):
    torch.save(torch.randn(4, 2, 8, 8), tmp_path / "a.pt")
    torch.save(torch.randn(4, 2, 8, 8), tmp_path / "b.pt")
    config = TrainConfig(base_steps=4, data={"source": str(tmp_path), "num_val": 1})
    before = base_model_id(config, "no")
    assert before == base_model_id(config, "no")
    torch.save(torch.randn(4, 3, 8, 8), tmp_path / "b.pt")  # the user replaced a clip
    assert base_model_id(config, "no") != before
