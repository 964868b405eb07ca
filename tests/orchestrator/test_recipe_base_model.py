"""The full-attention base: pre-trained once per config, cached, shared by concurrent trials."""

import threading

import torch

from orchestrator.recipe import TrainConfig
from orchestrator.recipe.base_model import base_model_id, load_base_model


def load(config, log):
    return load_base_model(config, device=torch.device("cpu"), mixed_precision="no", clip_shape=(4, 16), log=log.append)


def test_cached_by_config_and_trained_once_under_concurrency(tmp_path):
    config = TrainConfig(base_steps=4, base_cache_dir=str(tmp_path))
    logs: list[list[str]] = [[] for _ in range(3)]
    results = [None] * 3

    def trial(i):
        results[i] = load(config, logs[i])

    threads = [threading.Thread(target=trial, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trained = [log for log in logs if any("pre-training base model" in line for line in log)]
    assert len(trained) == 1  # one trial trained it, the others waited on the lock and loaded it
    (model, base_id), *others = results
    assert all(other_id == base_id for _, other_id in others)
    for other, _ in others:
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters(), strict=True))
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [base_id]  # no temporary left behind

    again: list[str] = []
    load(config, again)
    assert again == []  # cached: no training the second time


def test_id_changes_with_the_config():
    a = base_model_id(TrainConfig(base_steps=4), "no")
    assert a == base_model_id(TrainConfig(base_steps=4, lr=1.0, steps=3), "no")  # fine-tune knobs don't matter
    assert a != base_model_id(TrainConfig(base_steps=5), "no")
    assert a != base_model_id(TrainConfig(base_steps=4, seed=1), "no")
    assert a != base_model_id(TrainConfig(base_steps=4), "bf16")
    assert base_model_id(TrainConfig(base_steps=0), "no") == "tiny-init-seed0"
